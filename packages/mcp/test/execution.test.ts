import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { McpGateway } from "../src/gateway.js";
import { RecordingClient } from "./recording-client.js";

async function hostFor(gateway: McpGateway, name: string, version: string): Promise<Client> {
  const [a, b] = InMemoryTransport.createLinkedPair();
  await gateway.createServer().connect(a);
  const c = new Client({ name, version });
  await c.connect(b);
  return c;
}

describe("the execution context the gateway sends with every request", () => {
  it("names the host session's tag, the MCP host, its version and the MCP request id, within the protocol's 128 bytes", async () => {
    const rc = new RecordingClient();
    const gateway = await McpGateway.open(rc as unknown as KernelClient);
    const host = await hostFor(gateway, "Some Desktop Host", "4.5.6");
    const r = (await host.callTool({ name: "system_health", arguments: {} })) as CallToolResult;
    assert.equal(r.isError, undefined);
    assert.deepEqual(rc.sent[0]?.intent, { op: "system.health", target: "kernel://", args: {} });
    assert.match(rc.sent[0]?.opts.execution ?? "", /^mcp\[s1\]:Some Desktop Host\/4\.5\.6#\d+$/);
    await host.callTool({ name: "system_health", arguments: {} });
    assert.notEqual(rc.sent[1]?.opts.execution, rc.sent[0]?.opts.execution, "each MCP request its own id");

    const long = await hostFor(gateway, `x${"é".repeat(200)}`, "1");
    await long.callTool({ name: "system_health", arguments: {} });
    const clipped = rc.sent[2]?.opts.execution ?? "";
    assert.ok(Buffer.byteLength(clipped) <= 128 && /^mcp\[s2\]:xé+#\d+$/.test(clipped), clipped);
    assert.ok(!clipped.includes("\uFFFD"), "never cut inside a character");
    await host.close();
    await long.close();
    await gateway.close();
  });
});
