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

  it("holds at most maxSessions host sessions: the next initialize gets 503 with Retry-After until one ends", async () => {
    const gateway = await McpGateway.open(new RecordingClient() as unknown as KernelClient);
    const bearer = "a-secret-of-enough-length";
    const http = await serveHttp(gateway, { host: "127.0.0.1", port: 0, bearer, maxSessions: 2 });
    const transports: StreamableHTTPClientTransport[] = [];
    const connect = async () => {
      const t = new StreamableHTTPClientTransport(new URL(http.url), {
        requestInit: { headers: { Authorization: `Bearer ${bearer}` } },
      });
      const c = new Client({ name: "busy-host", version: "1" });
      await c.connect(t);
      transports.push(t);
      return c;
    };
    const hosts: Client[] = [];
    try {
      hosts.push(await connect(), await connect());
      assert.equal(http.sessions(), 2);
      // a third host, with the secret: refused without growing the gateway
      const init = {
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "third", version: "1" } },
      };
      const r = await fetch(http.url, {
        method: "POST",
        headers: {
          Authorization: `Bearer ${bearer}`,
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
        },
        body: JSON.stringify(init),
      });
      assert.equal(r.status, 503);
      assert.ok(Number(r.headers.get("retry-after")) >= 1);
      assert.match(((await r.json()) as { error: { message: string } }).error.message, /2 MCP sessions are open/);
      assert.equal(http.sessions(), 2);
      // the sessions already open keep working
      assert.equal((await (hosts[0] as Client).listTools()).tools.length, 2);
      // one host ends its session (DELETE): a new one may start
      await (transports[0] as StreamableHTTPClientTransport).terminateSession();
      await until(() => http.sessions() === 1, 30_000, "the ended session to be gone");
      hosts.push(await connect());
      assert.equal(http.sessions(), 2);
    } finally {
      for (const h of hosts) await h.close().catch(() => {});
      await http.close();
      await gateway.close();
    }
  });

  it("refuses a maxSessions that is not a positive integer", async () => {
    const gateway = await McpGateway.open(new RecordingClient() as unknown as KernelClient);
    try {
      for (const maxSessions of [0, -1, 1.5]) {
        await assert.rejects(
          serveHttp(gateway, { host: "127.0.0.1", port: 0, bearer: "a-secret-of-enough-length", maxSessions }),
          (e: Error) => e.name === "GatewayConfigError" && /maxSessions/.test(e.message),
        );
      }
    } finally {
      await gateway.close();
    }
  });
});
