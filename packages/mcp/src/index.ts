/**
 * @kpip/mcp — the MCP gateway: any MCP host acts as one persona, its tools the ops that
 * persona's tokens allow, every call a KPIP request the kernel checks and audits.
 * Depends on @kpip/client and @kpip/protocol (never on the kernel) and the official MCP SDK.
 */

export { GATEWAY_NAME, GATEWAY_VERSION, type GatewayOptions, McpGateway } from "./gateway.js";
export { GrantView } from "./grant.js";
export {
  DEFAULT_MAX_CALLS_PER_SESSION,
  DEFAULT_MAX_SUBSCRIPTIONS_PER_HOST,
  DEFAULT_MAX_TOTAL_CALLS,
  DEFAULT_MAX_TOTAL_UNREAD_BYTES,
  DEFAULT_MAX_UNREAD_BYTES_PER_SESSION,
  type GatewayLoad,
  HOST_BUSY,
  type HostLoad,
} from "./host-budget.js";
export { checkHttpOptions, GatewayConfigError, type HttpGateway, type HttpOptions, serveHttp } from "./http.js";
export { BYTES_MARKER, InputError, inputSchema, type OpDecl, parseToolArgs } from "./schema.js";
export { serveStdio } from "./stdio.js";
