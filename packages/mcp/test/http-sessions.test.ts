import assert from "node:assert/strict";
import { type Socket, connect as tcp } from "node:net";
import { after, before, describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpGateway } from "../src/gateway.js";
import { serveHttp } from "../src/http.js";
import { gatewayOn, KernelHome, until } from "./harness.js";
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

describe("host sessions of the HTTP gateway on a real kernel", () => {
  const BEARER = "a-secret-of-enough-length";
  const k = new KernelHome();
  let gw: Awaited<ReturnType<typeof gatewayOn>>;
  before(async () => {
    await k.start();
    const files = await k.persona("ida", [
      { ops: ["system.describe"], targets: ["kernel://"] },
      { ops: ["compute.submit", "op.status", "op.result", "op.cancel"], targets: ["op://**"] },
    ]);
    gw = await gatewayOn(k, files);
  });
  after(async () => {
    await gw?.close();
    await k.dispose();
  });

  it("keeps a host session whose call runs past the idle time, and closes it once idle; a GET stream alone does not keep one", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER, idleMs: 3000 });
    const { port } = new URL(http.url);
    const head = {
      authorization: `Bearer ${BEARER}`,
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
    };
    const session = async () => {
      const init = { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "idle", version: "1" } };
      const r = await fetch(http.url, {
        method: "POST",
        headers: head,
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: init }),
      });
      await r.text();
      const h = { ...head, "mcp-session-id": r.headers.get("mcp-session-id") ?? "", "mcp-protocol-version": "2025-06-18" };
      await fetch(http.url, {
        method: "POST",
        headers: h,
        body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }),
      });
      return h;
    };
    /** A request on its own connection, kept open; `seen` is what came back so far. */
    const open = (method: string, h: Record<string, string>, body = "") => {
      const s: Socket = tcp(Number(port), "127.0.0.1");
      s.on("error", () => {});
      let seen = "";
      s.on("data", (d) => {
        seen += d;
      });
      const lines = Object.entries({ host: `127.0.0.1:${port}`, ...h, "content-length": String(Buffer.byteLength(body)) });
      s.write(`${method} /mcp HTTP/1.1\r\n${lines.map(([n, v]) => `${n}: ${v}\r\n`).join("")}\r\n${body}`);
      return { s, seen: () => seen };
    };
    const socks: Socket[] = [];
    try {
      // A waits on a long call; C only holds its GET stream open (a host that forgot its session would too).
      const a = await session();
      const call = { name: "compute_submit", arguments: { target: "op://command/sh", args: { args: ["-c", "sleep 600"] } } };
      const running = open("POST", a, JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: call }));
      socks.push(running.s);
      await until(() => gw.gateway.totalLoad().calls === 1, 60_000, "A's call to run");
      const c = await session();
      const stream = open("GET", { ...c, accept: "text/event-stream" });
      socks.push(stream.s);
      await until(() => stream.seen().startsWith("HTTP/1.1 200"), 60_000, "C's GET stream");
      // B's last request comes after every request of A and C: when the sweep has closed B, A
      // and C have had no request for longer than the idle time too.
      await session();
      assert.equal(http.sessions(), 3);
      // Not asked (a request would count as B's activity): B and C can only leave by the sweep.
      await until(() => http.sessions() <= 1, 60_000, "the idle sessions B and C to be closed");
      assert.equal(http.sessions(), 1, "A, waiting on its call, is not idle");
      await until(() => stream.seen().endsWith("\r\n0\r\n\r\n"), 60_000, "C's GET stream to end with its session");
      assert.equal(gw.gateway.totalLoad().calls, 1, "A's call still runs");
      const list = await fetch(http.url, {
        method: "POST",
        headers: a,
        body: JSON.stringify({ jsonrpc: "2.0", id: 8, method: "tools/list" }),
      });
      assert.equal(list.status, 200);
      assert.match(await list.text(), /compute_submit/);
      // Once the call's connection has closed (the call is cancelled), A idles out too.
      running.s.destroy();
      await until(() => gw.gateway.totalLoad().calls === 0, 60_000, "A's call to be cancelled");
      await until(() => http.sessions() === 0, 60_000, "A to idle out");
    } finally {
      for (const s of socks) s.destroy();
      await http.close();
    }
  });
});
