import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import type { McpGateway } from "./gateway.js";

/**
 * MCP over this process's stdin/stdout (the host started it). Resolves when the host closes
 * its end and every call it sent has been answered: input may end right after the last
 * request (a pipe), and its answer is still owed. An op still running then is cancelled
 * (op.cancel): a host that has gone must not keep the gateway following it until the kernel's
 * maximum runtime.
 */
export async function serveStdio(gateway: McpGateway): Promise<void> {
  const transport = new StdioServerTransport();
  const server = gateway.createServer();
  const closed = new Promise<void>((resolve) => {
    transport.onclose = () => resolve();
    process.stdin.once("end", () => resolve());
  });
  await server.connect(transport);
  await closed;
  gateway.endInput(server);
  await gateway.drained();
}
