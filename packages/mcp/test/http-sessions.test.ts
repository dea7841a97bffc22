import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpGateway } from "../src/gateway.js";
import { serveHttp } from "../src/http.js";
import { until } from "./harness.js";
import { RecordingClient } from "./recording-client.js";

describe("host sessions of the HTTP gateway", () => {
  it("closes a session that stays idle; the host then gets 404 and must start a new one", async () => {
    const gateway = await McpGateway.open(new RecordingClient() as unknown as KernelClient);
    const bearer = "a-secret-of-enough-length";
    const http = await serveHttp(gateway, { host: "127.0.0.1", port: 0, bearer, idleMs: 2000 });
    const connect = async () => {
      const c = new Client({ name: "idle-host", version: "1" });
      await c.connect(
        new StreamableHTTPClientTransport(new URL(http.url), { requestInit: { headers: { Authorization: `Bearer ${bearer}` } } }),
      );
      return c;
    };
    const hosts: Client[] = [];
    try {
      hosts.push(await connect());
      assert.deepEqual((await (hosts[0] as Client).listTools()).tools.map((t) => t.name).sort(), [
        "system_describe",
        "system_health",
      ]);
      await until(() => http.sessions() === 0, 30_000, "the idle session to close");
      await assert.rejects((hosts[0] as Client).listTools(), /404|session/i);
      hosts.push(await connect());
      assert.deepEqual((await (hosts[1] as Client).listTools()).tools.map((t) => t.name).sort(), [
        "system_describe",
        "system_health",
      ]);
    } finally {
      for (const h of hosts) await h.close().catch(() => {});
      await http.close();
      await gateway.close();
    }
  });
});
