/**
 * The baseline for `npm run bench:mcp`: a plain MCP SDK stdio server whose one tool does
 * nothing — what a host pays for an MCP tool call with no authorization and no audit.
 */
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

// The low-level Server, like the gateway, so the two differ only in what a call does.
const server = new Server({ name: "noop", version: "0.0.0" }, { capabilities: { tools: {} } });
server.setRequestHandler(ListToolsRequestSchema, () => ({
  tools: [{ name: "noop", description: "does nothing", inputSchema: { type: "object", properties: {} } }],
}));
server.setRequestHandler(CallToolRequestSchema, () => ({ content: [{ type: "text", text: '{"status":"SUCCESS"}' }] }));
await server.connect(new StdioServerTransport());
