/**
 * The floor for `npm run bench:mcp`: a plain MCP SDK stdio server whose one tool makes the same
 * KPIP request the gateway's system_health tool makes (through @kpip/client) and returns its
 * status, with none of the gateway's work (no tool table, no argument checks, no result
 * mapping). What any MCP server that asks the kernel pays: the gateway cannot go below it.
 * Usage: node kpip-server.js <socket> <identity file> <token file>
 */
import { readFileSync } from "node:fs";
import { KernelClient } from "@kpip/client";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [socket, identity, tokenFile] = process.argv.slice(2) as [string, string, string];
const client = await KernelClient.connect({ socket, identity, tokens: [readFileSync(tokenFile, "utf8")] });
const server = new Server({ name: "kpip-floor", version: "0.0.0" }, { capabilities: { tools: {} } });
server.setRequestHandler(ListToolsRequestSchema, () => ({
  tools: [{ name: "health", description: "system.health", inputSchema: { type: "object", properties: {} } }],
}));
// With the context the gateway sends too (the host and the MCP request id; cancellation).
server.setRequestHandler(CallToolRequestSchema, async (_req, extra) => {
  const r = await client.call(
    "system.health",
    "kernel://",
    {},
    { execution: `mcp:bench-host/0.0.0#${extra.requestId}`, signal: extra.signal },
  );
  return { content: [{ type: "text", text: JSON.stringify({ status: r.status }) }] };
});
// The host closing its end ends this process (and writes its --cpu-prof profile).
process.stdin.once("end", () => void client.close().finally(() => process.exit(0)));
await server.connect(new StdioServerTransport());
