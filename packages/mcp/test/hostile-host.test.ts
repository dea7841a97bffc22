import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { type Socket, connect as tcp } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { KernelClient } from "@kpip/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { ErrorCode } from "@modelcontextprotocol/sdk/types.js";
import { McpGateway } from "../src/gateway.js";
import { HOST_BUSY, HostBudget, RefusalBucket, RefusalRate } from "../src/host-budget.js";
import { type HttpGateway, serveHttp } from "../src/http.js";
import { CoalescedProgress } from "../src/progress.js";
import { gatewayOn, HOST, KernelHome, mcpError, until } from "./harness.js";
import { RecordingClient } from "./recording-client.js";

const BEARER = "a-secret-of-enough-length";
const RIGHTS = [
  { ops: ["system.describe"], targets: ["kernel://"] },
  { ops: ["storage.read", "storage.write", "storage.list"], targets: ["obj://ws1/**"] },
  { ops: ["event.*"], targets: ["topic://**"] },
  { ops: ["compute.submit", "op.status", "op.result", "op.cancel"], targets: ["op://**"] },
];
const JSON_SSE = { "content-type": "application/json", accept: "application/json, text/event-stream" };
const INIT = JSON.stringify({
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "hostile", version: "1" } },
});

/** An honest host (the SDK's client); `end` ends its session (DELETE), as close alone does not. */
async function connect(http: HttpGateway, info = HOST): Promise<Client & { end(): Promise<void> }> {
  const t = new StreamableHTTPClientTransport(new URL(http.url), {
    requestInit: { headers: { Authorization: `Bearer ${BEARER}` } },
  });
  const c = new Client(info);
  await c.connect(t);
  return Object.assign(c, {
    end: async () => {
      await t.terminateSession();
      await c.close();
    },
  });
}

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
/** Memory the gateway's answers can take, after a full collection. */
function held(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

/** A host session sent by hand (fetch), so that requests can race its end. */
async function rawSession(http: HttpGateway) {
  const h0 = { authorization: `Bearer ${BEARER}`, ...JSON_SSE };
  const r = await fetch(http.url, { method: "POST", headers: h0, body: INIT });
  await r.text();
  const h = { ...h0, "mcp-session-id": r.headers.get("mcp-session-id") ?? "", "mcp-protocol-version": "2025-06-18" };
  const post = (m: unknown) => fetch(http.url, { method: "POST", headers: h, body: JSON.stringify(m) }).then((x) => x.text());
  await post({ jsonrpc: "2.0", method: "notifications/initialized" });
  let id = 1;
  return {
    sid: h["mcp-session-id"],
    send: (method: string, params: unknown) => post({ jsonrpc: "2.0", id: id++, method, params }),
    end: () => fetch(http.url, { method: "DELETE", headers: h }).then((x) => x.status),
  };
}

/** One POST of `body` in session `sid` on its own connection; `read: false` never reads the answer. */
function rawPost(http: HttpGateway, sid: string, body: string, read: boolean): Socket {
  const { port } = new URL(http.url);
  const sock = tcp(Number(port), "127.0.0.1");
  if (!read) sock.pause();
  sock.write(
    `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: ${sid}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  return sock;
}

describe("the HTTP gateway under a hostile host holding the secret", () => {
  // A small bound: a leaked watch shows as the next honest subscription refused.
  const k = new KernelHome({ maxSubscriptionsPerSession: 8 });
  let gw: Awaited<ReturnType<typeof gatewayOn>>;
  let files: { identityFile: string; tokenFile: string };
  before(async () => {
    await k.start();
    files = await k.persona("hank", RIGHTS);
    gw = await gatewayOn(k, files);
  });
  after(async () => {
    await gw?.close();
    await k.dispose();
  });

  it("a peer without the secret cannot lock hosts out by holding connections: it sheds only its own, never a host's", async () => {
    const MAX = 4;
    // A long body timeout: connections that wait in the middle of a body stay open until the test ends them.
    const http = await serveHttp(gw.gateway, {
      host: "127.0.0.1",
      port: 0,
      bearer: BEARER,
      maxConnections: MAX,
      bodyTimeoutMs: 600_000,
    });
    const { port } = new URL(http.url);
    const socks: Socket[] = [];
    const open = (first?: string) => {
      const s = tcp(Number(port), "127.0.0.1");
      s.on("error", () => {});
      const closed = new Promise<void>((r) => s.once("close", () => r()));
      if (first) s.write(first);
      socks.push(s);
      return { s, closed };
    };
    try {
      // Idle sockets without the secret fill every slot; an honest host still gets in, shedding the oldest.
      const idle = Array.from({ length: MAX }, () => open());
      await until(() => http.connections().open === MAX, 10_000, "the idle sockets are counted");
      const host = await connect(http);
      assert.ok((await host.listTools()).tools.length > 0);
      await host.end();
      assert.ok(http.connections().shed >= 1, JSON.stringify(http.connections()));
      await Promise.race(idle.map((x) => x.closed));
      for (const s of socks.splice(0)) s.destroy();
      await until(() => http.connections().open === 0, 10_000, "every connection closed");

      // Every slot held by a connection that showed the secret (each in the middle of its body):
      // a new one without it is closed as it arrives, and none of theirs is shed.
      const body = `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"a":`;
      const trusted = Array.from({ length: MAX }, () => open(body));
      await until(() => http.bodyBytes() === MAX * 5, 10_000, "the trusted connections are reading their bodies");
      const before = http.connections();
      const late = open();
      const handled = () => http.connections().refused + http.connections().shed > before.refused + before.shed;
      await until(handled, 10_000, "the late connection is counted");
      assert.deepEqual(http.connections(), { open: MAX, shed: before.shed, refused: before.refused + 1 });
      await late.closed;
      // The trusted ones are served: each finishes its body and gets its answer (not an initialize: 400).
      const answers = trusted.map(
        ({ s }) => new Promise<string>((r) => s.once("data", (d: Buffer) => r(d.toString("latin1").split("\r\n")[0] as string))),
      );
      for (const { s } of trusted) s.write('"b"}\r\n');
      assert.deepEqual(await Promise.all(answers), Array(MAX).fill("HTTP/1.1 400 Bad Request"));
    } finally {
      for (const s of socks) s.destroy();
      await http.close();
    }
  });

  it("refuses an initialize over 64 KiB before parsing it: the session would keep its client info and capabilities, ~33 MB for 4 MiB of small objects", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const headers = { authorization: `Bearer ${BEARER}`, ...JSON_SSE };
      const init = (experimental: unknown) =>
        JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "initialize",
          params: { protocolVersion: "2025-06-18", capabilities: { experimental }, clientInfo: { name: "bloat", version: "1" } },
        });
      // Small objects: in the heap many times their JSON (~33 MB a session before this bound).
      const many: Record<string, unknown> = {};
      for (let i = 0; i < 200_000; i++) many[`k${i}`] = { a: [0] };
      const big = init(many);
      assert.ok(big.length < 4 * gw.gateway.maxArgsBytes, "within the body bound: only the initialize bound refuses it");
      const servers = gw.gateway.serverCount;
      for (let i = 0; i < 2; i++) {
        const r = await fetch(http.url, { method: "POST", headers, body: big });
        assert.equal(r.status, 413, await r.text());
        assert.equal(r.headers.get("connection"), "close", "the rest of the body is never read");
      }
      const r = await fetch(http.url, { method: "POST", headers, body: init({ x: { y: "y".repeat(60_000) } }) });
      assert.equal(r.status, 200, `an initialize of 60 KB is served: ${await r.text()}`);
      assert.equal(http.sessions(), 1, "only the served one was kept");
      assert.equal(gw.gateway.serverCount, servers + 1);
    } finally {
      await http.close();
    }
  });

  it("an initialize is held to the operator's smaller body bound too (--max-args-bytes under 16 KiB), not raised to 64 KiB", async () => {
    // 1 KiB of arguments: bodies of at most 4 KiB (4 × maxArgsBytes), an initialize's as every other's.
    const small = await gatewayOn(k, files, { maxArgsBytes: 1024 });
    const http = await serveHttp(small.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const headers = { authorization: `Bearer ${BEARER}`, ...JSON_SSE };
      const init = (pad: string) =>
        JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "initialize",
          params: {
            protocolVersion: "2025-06-18",
            capabilities: { experimental: { pad: { pad } } },
            clientInfo: { name: "bloat", version: "1" },
          },
        });
      const r = await fetch(http.url, { method: "POST", headers, body: init("y".repeat(32_000)) });
      assert.equal(r.status, 413, await r.text());
      assert.equal(http.sessions(), 0, "none kept");
      const ok = await fetch(http.url, { method: "POST", headers, body: init("y") });
      assert.equal(ok.status, 200, `a small initialize is served: ${await ok.text()}`);
      assert.equal(http.sessions(), 1);
    } finally {
      await http.close();
      await small.close();
    }
  });

  it("keeps nothing of an initialize refused for its Accept or Content-Type, and does not count it", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER, maxSessions: 2 });
    try {
      const codes: Record<number, number> = {};
      for (let i = 0; i < 200; i++) {
        const r = await fetch(http.url, {
          method: "POST",
          body: INIT,
          headers: {
            authorization: `Bearer ${BEARER}`,
            "content-type": i % 2 ? "text/plain" : "application/json",
            accept: i % 2 ? "application/json, text/event-stream" : "application/json",
          },
        });
        codes[r.status] = (codes[r.status] ?? 0) + 1;
        await r.arrayBuffer();
      }
      assert.deepEqual(codes, { 406: 100, 415: 100 });
      assert.equal(gw.gateway.serverCount, 0);
      assert.equal(http.sessions(), 0);
      // Joined duplicate headers: the gateway's check passes it, the SDK refuses it after the
      // server exists; that server is closed too.
      const dup = await fetch(http.url, {
        method: "POST",
        body: INIT,
        headers: {
          authorization: `Bearer ${BEARER}`,
          "content-type": "application/json;charset=utf-8, text/plain",
          accept: "application/json, text/event-stream",
        },
      });
      await dup.arrayBuffer();
      assert.equal(dup.status, 415);
      assert.equal(gw.gateway.serverCount, 0);
      assert.equal(http.sessions(), 0);
      // Honest hosts still get both slots.
      const a = await connect(http);
      const b = await connect(http);
      assert.equal(gw.gateway.serverCount, 2);
      assert.ok((await a.listTools()).tools.length > 0);
      await a.close();
      await b.close();
    } finally {
      await http.close();
    }
  });

  it("leaves no kernel watch behind when the session ends or unsubscribes while its subscription is being made", async () => {
    const w = gw.gateway.watches;
    const [a, b] = InMemoryTransport.createLinkedPair();
    const server = gw.gateway.createServer();
    await server.connect(a);
    try {
      // The session ends while the kernel watch is being made.
      const p1 = w.subscribe(server, "obj://ws1/race/1", "test#1");
      const p2 = w.subscribe(server, "obj://ws1/race/2", "test#2");
      await w.dropServer(server);
      await Promise.all([p1, p2]);
      assert.deepEqual(w.uris, []);
      await w.subscribe(server, "obj://ws1/race/3", "test#3");
      assert.deepEqual(w.uris, [], "an ended session subscribes to nothing");
      // Within a live session: unsubscribe answered before the subscribe it follows.
      const other = gw.gateway.createServer();
      const p3 = w.subscribe(other, "obj://ws1/race/4", "test#4");
      await w.unsubscribe(other, "obj://ws1/race/4");
      await p3;
      assert.deepEqual(w.uris, []);
      // Two sessions, one cancelled: the other keeps its watch.
      const p4 = w.subscribe(other, "obj://ws1/race/5", "test#5");
      const p5 = w.subscribe(server, "obj://ws1/race/5", "test#6");
      await w.dropServer(server);
      await Promise.all([p4, p5]);
      assert.deepEqual(w.uris, ["obj://ws1/race/5"]);
      await w.dropServer(other);
      assert.deepEqual(w.uris, []);
    } finally {
      await b.close();
    }
  });

  it("keeps subscriptions for honest hosts after many hostile sessions raced subscribe against their end", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      for (let round = 0; round < 12; round++) {
        const s = await rawSession(http);
        const sent = Array.from({ length: 6 }, (_, i) =>
          s.send("resources/subscribe", { uri: `obj://ws1/hostile/${round}/${i}` }).catch(() => ""),
        );
        // Ends at once (the subscriptions are still being made) or after some were answered.
        if (round % 2) await sent[0];
        assert.equal(await s.end(), 200);
        await Promise.all(sent);
      }
      // A subscribe and an unsubscribe sent together by one session.
      const s = await rawSession(http);
      await Promise.all([
        s.send("resources/subscribe", { uri: "obj://ws1/together" }),
        s.send("resources/unsubscribe", { uri: "obj://ws1/together" }),
      ]);
      await until(() => gw.gateway.watches.uris.length === 0, 30_000, "every hostile watch released");
      await s.end();
      const honest = await connect(http);
      for (let i = 0; i < 8; i++) await honest.subscribeResource({ uri: `obj://ws1/honest/${i}` });
      assert.equal(gw.gateway.watches.uris.length, 8);
      await honest.end();
      await until(() => gw.gateway.watches.uris.length === 0, 30_000, "the honest host's watches released");
    } finally {
      await http.close();
    }
  });

  it("bounds the subscriptions one host session holds: past it HOST_BUSY before the kernel is asked; others subscribe, a shared watch takes no slot of the kernel session", async () => {
    assert.equal(gw.gateway.watches.maxPerHost, 32, "the default: an eighth of the kernel's default 256");
    const own = await gatewayOn(k, files, { maxSubscriptionsPerHost: 3 });
    const http = await serveHttp(own.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const a = await connect(http);
      const b = await connect(http);
      await b.subscribeResource({ uri: "obj://ws1/bound/shared" });
      for (let i = 0; i < 3; i++) await a.subscribeResource({ uri: `obj://ws1/bound/a${i}` });
      const e = await mcpError(a.subscribeResource({ uri: "obj://ws1/bound/a3" }));
      assert.equal(e.code, HOST_BUSY);
      assert.match(e.message, /holds 3 subscriptions \(the gateway's limit is 3\): unsubscribe/);
      assert.deepEqual(e.data, { retryable: true });
      const watched = (await k.audit("hank")).filter((r) => r.op === "storage.watch").map((r) => r.target);
      assert.ok(watched.includes("obj://ws1/bound/a2") && !watched.includes("obj://ws1/bound/a3"), "the kernel is never asked");
      // Joining a watch another session holds is a subscription too (case 352); a repeat is none.
      assert.equal((await mcpError(a.subscribeResource({ uri: "obj://ws1/bound/shared" }))).code, HOST_BUSY);
      await a.subscribeResource({ uri: "obj://ws1/bound/a0" });
      // Unsubscribing frees a place; the joined watch takes no slot of the kernel session.
      await a.unsubscribeResource({ uri: "obj://ws1/bound/a0" });
      await a.subscribeResource({ uri: "obj://ws1/bound/shared" });
      for (let i = 0; i < 2; i++) await b.subscribeResource({ uri: `obj://ws1/bound/b${i}` });
      assert.equal((await mcpError(b.subscribeResource({ uri: "obj://ws1/bound/b2" }))).code, HOST_BUSY);
      // shared, a1, a2, b0, b1: 5 of the kernel session's 8 slots for 6 subscriptions.
      assert.equal(own.gateway.watches.uris.length, 5);
      await a.end();
      await b.end();
      await until(() => own.gateway.watches.uris.length === 0, 30_000, "the hosts' watches released");
    } finally {
      await http.close();
      await own.close();
    }
  });

  it("a host cannot step past its subscription bound by having a second session join its watches and then leaving them: every subscription a session holds counts, shared or not", async () => {
    const own = await gatewayOn(k, files, { maxSubscriptionsPerHost: 3 });
    const http = await serveHttp(own.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const a = await connect(http);
      const b = await connect(http);
      // b joins each watch a makes, then a leaves it: b would hold it alone without ever being counted.
      let held = 0;
      for (let i = 0; i < 6; i++) {
        const uri = `obj://ws1/relay/${i}`;
        const made = await mcpError(a.subscribeResource({ uri })).catch(() => undefined);
        if (made) break;
        const joined = await mcpError(b.subscribeResource({ uri })).catch(() => undefined);
        await a.unsubscribeResource({ uri });
        if (joined) {
          assert.equal(joined.code, HOST_BUSY);
          break;
        }
        held++;
      }
      // b holds no more than its bound, shared or alone: the kernel session's other slots stay for other hosts.
      assert.equal(held, 3);
      assert.ok(own.gateway.watches.uris.length <= 3, own.gateway.watches.uris.join(", "));
      const e = await mcpError(b.subscribeResource({ uri: "obj://ws1/relay/next" }));
      assert.equal(e.code, HOST_BUSY);
      assert.match(e.message, /holds 3 subscriptions \(the gateway's limit is 3\): unsubscribe/);
      // A repeated subscription to what it holds is no new one.
      await b.subscribeResource({ uri: "obj://ws1/relay/0" });
      const c = await connect(http);
      for (let i = 0; i < 3; i++) await c.subscribeResource({ uri: `obj://ws1/relay/c${i}` });
      await a.end();
      await b.end();
      await c.end();
      await until(() => own.gateway.watches.uris.length === 0, 30_000, "the hosts' watches released");
    } finally {
      await http.close();
      await own.close();
    }
  });

  it("offers no event subscription as a tool: its slots would outlive the host session, its events reach no host", async () => {
    const names = gw.gateway.toolNames;
    assert.ok(names.includes("event_emit"), names.join(", "));
    assert.ok(!names.includes("event_subscribe") && !names.includes("event_unsubscribe"), names.join(", "));
    // Nor a storage watch, which its storage.read grant would allow: hosts use resources/subscribe.
    assert.ok(names.includes("storage_read"), names.join(", "));
    assert.ok(!names.includes("storage_watch") && !names.includes("storage_unwatch"), names.join(", "));
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const host = await connect(http);
      const listed = (await host.listTools()).tools.map((t) => t.name);
      assert.ok(!listed.some((n) => /^event.(un)?subscribe$/.test(n)), listed.join(", "));
      const e = await mcpError(host.callTool({ name: "event_subscribe", arguments: { target: "topic://t/1" } }));
      assert.equal(e.code, ErrorCode.InvalidParams);
      assert.ok(!(await k.audit("hank")).some((r) => r.op === "event.subscribe"), "the kernel is never asked");
      // Every slot of the gateway's session is still there for resources/subscribe.
      for (let i = 0; i < 8; i++) await host.subscribeResource({ uri: `obj://ws1/slot/${i}` });
      await host.end();
      await until(() => gw.gateway.watches.uris.length === 0, 30_000, "the host's watches released");
    } finally {
      await http.close();
    }
  });

  it("a host whose name holds control characters is served; the record names it with them replaced, never raw", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const host = await connect(http, { name: "evil\nstatus       SUCCESS\u001b[8m", version: "1\u202e" });
      const r = await host.callTool({ name: "storage_write", arguments: { target: "obj://ws1/named", args: { data: "x" } } });
      assert.ok(!r.isError, JSON.stringify(r));
      await host.end();
      const rec = (await k.audit("hank")).find((x) => x.op === "storage.write" && x.target === "obj://ws1/named");
      assert.ok(rec, "the write is on the record");
      assert.match(String(rec.execution), /^mcp\[s\d+\]:evil\?status {7}SUCCESS\?\[8m\/1\?#/);
    } finally {
      await http.close();
    }
  });

  it("tells host sessions apart in the record whatever they call themselves; a long name is clipped, never the tag or the request id", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const write = (h: Client, target: string) =>
        h.callTool({ name: "storage_write", arguments: { target, args: { data: "x" } } });
      const honest = await connect(http, { name: "same-host", version: "1" });
      const twin = await connect(http, { name: "same-host", version: "1" });
      const long = await connect(http, { name: "x".repeat(140), version: "1" });
      await write(honest, "obj://ws1/label/a");
      await write(twin, "obj://ws1/label/b");
      await write(long, "obj://ws1/label/c");
      await write(long, "obj://ws1/label/d");
      const rows = await k.audit("hank");
      const label = (target: string) => String(rows.find((x) => x.op === "storage.write" && x.target === target)?.execution);
      const [a, b, c, d] = ["a", "b", "c", "d"].map((x) => label(`obj://ws1/label/${x}`)) as [string, string, string, string];
      const tag = (s: string) => /^mcp\[(s\d+)\]:/.exec(s)?.[1];
      assert.match(a, /^mcp\[s\d+\]:same-host\/1#\d+$/);
      assert.match(b, /^mcp\[s\d+\]:same-host\/1#\d+$/);
      assert.notEqual(tag(a), tag(b), `two sessions calling themselves the same: ${a} / ${b}`);
      // The long name is clipped; the tag and each call's request id are kept, within 128 bytes.
      for (const s of [c, d]) {
        assert.ok(Buffer.byteLength(s) <= 128, s);
        assert.match(s, /^mcp\[s\d+\]:x+#\d+$/);
      }
      assert.equal(tag(c), tag(d));
      assert.notEqual(c, d, "each call its own request id");
      for (const h of [honest, twin, long]) await h.end();
    } finally {
      await http.close();
    }
  });

  it("offers no token.bind tool: a token one host binds would add its authority to the session every host shares", async () => {
    const tina = await k.persona("tina", [
      { ops: ["system.describe"], targets: ["kernel://"] },
      { ops: ["token.bind", "token.inspect", "token.list"], targets: ["token://**", "persona://tina"] },
    ]);
    const g = await gatewayOn(k, tina);
    try {
      const names = g.gateway.toolNames;
      assert.ok(names.includes("token_inspect"), names.join(", "));
      assert.ok(!names.includes("token_bind"), names.join(", "));
    } finally {
      await g.close();
    }
  });

  it("refuses a host's calls past its bounds while it leaves large answers unread; others are served, memory stays bounded", async () => {
    const SIZE = 4 * 1024 * 1024;
    const MAX_UNREAD = 8 * 1024 * 1024;
    await gw.client.storage.putLarge("obj://ws1/big", [randomBytes(SIZE)], { size: SIZE });
    const small = await gatewayOn(k, files, { maxCallsPerSession: 4, maxUnreadBytesPerSession: MAX_UNREAD });
    const http = await serveHttp(small.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    const socks: Socket[] = [];
    try {
      // An honest host reads it once first: buffers that grow to a large answer and stay are not
      // what is measured.
      const honest = await connect(http);
      const blob = (await honest.readResource({ uri: "obj://ws1/big" })).contents.map((c) => ("blob" in c ? c.blob : ""));
      assert.equal(Buffer.from(blob[0] ?? "", "base64").length, SIZE);
      blob.length = 0;
      const hostile = await rawSession(http);
      const load = () => small.gateway.hostLoads()[1] as ReturnType<typeof small.gateway.hostLoads>[0];
      const before = held();
      const { port } = new URL(http.url);
      const N = 16;
      for (let i = 0; i < N; i++) {
        // A connection that is never read: the answer waits in the gateway for the host.
        const body = JSON.stringify({ jsonrpc: "2.0", id: 100 + i, method: "resources/read", params: { uri: "obj://ws1/big" } });
        const sock = tcp(Number(port), "127.0.0.1");
        sock.pause();
        socks.push(sock);
        sock.write(
          `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: ${hostile.sid}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
        await until(() => load().served + load().refused === i + 1 && load().calls === 0, 60_000, `read ${i} handled`);
      }
      const answer = Math.ceil(SIZE / 3) * 4;
      assert.ok(load().refused > 0, JSON.stringify(load()));
      assert.ok(load().unreadBytes <= MAX_UNREAD + answer, JSON.stringify(load()));
      const grown = held() - before;
      assert.ok(grown < 4 * (MAX_UNREAD + answer), `the gateway holds ${grown} bytes more`);
      // The hostile session is told why, and that it may retry; another host is served.
      const busy = await hostile.send("resources/read", { uri: "obj://ws1/big" });
      assert.match(busy, new RegExp(`"code":${HOST_BUSY}.*not yet read`));
      const again = (await honest.readResource({ uri: "obj://ws1/big" })).contents.map((c) => ("blob" in c ? c.blob : ""));
      assert.equal(Buffer.from(again[0] ?? "", "base64").length, SIZE);
      again.length = 0;
      // The host closes those connections: their answers are dropped, and it may read again.
      for (const s of socks) s.destroy();
      await until(() => load().unreadBytes === 0, 30_000, "the unread answers dropped");
      assert.match(await hostile.send("resources/read", { uri: "obj://ws1/big" }), /"blob":/);
      await hostile.end();
      await honest.end();
      await until(() => held() - before < MAX_UNREAD / 2, 30_000, "the memory of the dropped answers released");
    } finally {
      for (const s of socks) s.destroy();
      await http.close();
      await small.close();
    }
  });

  it("bounds unread answers and calls in flight across all host sessions; delivery, a closed connection and the session's end release them", async () => {
    const SIZE = 4 * 1024 * 1024;
    const answer = Math.ceil(SIZE / 3) * 4;
    await gw.client.storage.putLarge("obj://ws1/total", [randomBytes(SIZE)], { size: SIZE });
    // Every session alone is far within its own bounds; together they are not.
    const g = await gatewayOn(k, files, { maxTotalUnreadBytes: answer + answer / 2, maxTotalCalls: 2 });
    const http = await serveHttp(g.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    const socks: Socket[] = [];
    try {
      const [a, b, c] = [await rawSession(http), await rawSession(http), await rawSession(http)];
      const read = (id: number) =>
        JSON.stringify({ jsonrpc: "2.0", id, method: "resources/read", params: { uri: "obj://ws1/total" } });
      const total = () => g.gateway.totalLoad();
      // Two sessions each leave one answer unread: the gateway holds two answers.
      socks.push(rawPost(http, a.sid, read(100), false));
      await until(() => total().unreadBytes >= answer && total().calls === 0, 60_000, "a's answer held");
      socks.push(rawPost(http, b.sid, read(100), false));
      await until(() => total().unreadBytes >= 2 * answer && total().calls === 0, 60_000, "b's answer held");
      // A third session, with nothing unread of its own, is refused, retryably.
      const busy = await c.send("resources/read", { uri: "obj://ws1/total" });
      assert.match(busy, new RegExp(`"code":${HOST_BUSY}.*the gateway holds \\d+ bytes of answers its hosts have not yet read`));
      assert.match(busy, /"retryable":true/);
      assert.equal(total().refused, 1);
      // Session a ends (DELETE) with its connection still open and unread: its answer no longer counts.
      assert.equal(await a.end(), 200);
      await until(() => total().unreadBytes < 2 * answer, 30_000, "a's answer released at its session's end");
      assert.match(await c.send("resources/read", { uri: "obj://ws1/total" }), /"blob":/);
      // b's connection closes: its answer is dropped.
      socks.pop()?.destroy();
      await until(() => total().unreadBytes === 0, 30_000, "b's answer released when its connection closed");
      // Calls in flight: two long calls from two sessions fill the gateway; a third session waits.
      const sleep = (id: number) =>
        JSON.stringify({
          jsonrpc: "2.0",
          id,
          method: "tools/call",
          params: { name: "compute_submit", arguments: { target: "op://command/sh", args: { args: ["-c", "sleep 600"] } } },
        });
      socks.push(rawPost(http, b.sid, sleep(200), true), rawPost(http, c.sid, sleep(200), true));
      await until(() => total().calls === 2, 60_000, "two calls running");
      const d = await rawSession(http);
      const full = await d.send("tools/call", { name: "storage_list", arguments: { target: "obj://ws1/" } });
      assert.match(full, new RegExp(`"code":${HOST_BUSY}.*the gateway has 2 calls in flight across its host sessions`));
      for (const s of socks.splice(0)) s.destroy();
      await until(() => total().calls === 0, 60_000, "the abandoned calls ended");
      assert.doesNotMatch(await d.send("tools/call", { name: "storage_list", arguments: { target: "obj://ws1/" } }), /-32029/);
      for (const s of [b, c, d]) await s.end();
      assert.deepEqual({ ...total(), refused: 0 }, { calls: 0, unreadBytes: 0, refused: 0 });
    } finally {
      for (const s of socks) s.destroy();
      await http.close();
      await g.close();
    }
  });

  it("bounds request bodies: one over its size by Content-Length (413), one not arriving in time (408), past the total being read (503)", async () => {
    const g = await gatewayOn(k, files, { maxArgsBytes: 64 * 1024 });
    // One body may be 256 KiB; all bodies being read together 384 KiB.
    const http = await serveHttp(g.gateway, {
      host: "127.0.0.1",
      port: 0,
      bearer: BEARER,
      maxTotalBodyBytes: 384 * 1024,
      bodyTimeoutMs: 1000,
    });
    const socks: Socket[] = [];
    /** A POST whose headers declare `length` bytes of body, of which `sent` are sent; resolves with what came back. */
    const partial = (sid: string, length: number, sent: number) => {
      const { port } = new URL(http.url);
      const sock = tcp(Number(port), "127.0.0.1");
      socks.push(sock);
      let said = "";
      sock.on("data", (d) => {
        said += d;
      });
      sock.on("error", () => {});
      sock.write(
        `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: ${sid}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: ${length}\r\n\r\n`,
      );
      sock.write(" ".repeat(sent));
      return { sock, said: () => said, ended: new Promise<string>((r) => sock.on("close", () => r(said))) };
    };
    try {
      const s = await rawSession(http);
      // Declared larger than a body may be: refused before a byte of it is read.
      const big = partial(s.sid, 100 * 1024 * 1024, 0);
      await until(() => /^HTTP\/1\.1 413/.test(big.said()), 20_000, "413 for a declared 100 MiB body");
      assert.match(big.said(), /over 262144 bytes/);
      assert.match(await big.ended, /connection: close/i);
      // A body that never finishes: 408 once its time is up, its bytes released.
      const slow = partial(s.sid, 1000, 10);
      await until(() => /^HTTP\/1\.1 408/.test(slow.said()), 20_000, "408 for a body that never finishes");
      assert.match(slow.said(), /did not arrive in full within 1000 ms/);
      await slow.ended;
      assert.equal(http.bodyBytes(), 0);
      // Two hosts' bodies in the making hold 300 KiB; a third body past 384 KiB in total is 503.
      const a = partial(s.sid, 200 * 1024, 150 * 1024);
      const b = partial((await rawSession(http)).sid, 200 * 1024, 150 * 1024);
      await until(() => http.bodyBytes() === 300 * 1024, 20_000, "300 KiB being read");
      const c = partial(s.sid, 200 * 1024, 100 * 1024);
      await until(() => /^HTTP\/1\.1 503/.test(c.said()), 20_000, "503 past the total");
      assert.match(c.said(), /retry-after: 1/i);
      assert.match(c.said(), /request bodies \(its limit is 393216\)/);
      // The others end (closed, or timed out): their bytes are released and POSTs are read again.
      a.sock.destroy();
      await b.ended;
      await until(() => http.bodyBytes() === 0, 20_000, "every body released");
      assert.match(await s.send("tools/list", {}), /"tools"/);
      await s.end();
    } finally {
      for (const x of socks) x.destroy();
      await http.close();
      await g.close();
    }
  });

  it("keeps no answer of a batch whose connection closed while another of its calls ran, before the session ends", async () => {
    const SIZE = 4 * 1024 * 1024;
    const answer = Math.ceil(SIZE / 3) * 4;
    await gw.client.storage.putLarge("obj://ws1/batch", [randomBytes(SIZE)], { size: SIZE });
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    const socks: Socket[] = [];
    try {
      const host = await rawSession(http);
      const load = () => gw.gateway.hostLoads().at(-1) as ReturnType<typeof gw.gateway.hostLoads>[0];
      // A large answer, then a call that runs on: the SDK answers the batch's response only
      // once both are answered, and keeps the first answer meanwhile.
      const round = async (i: number) => {
        const batch = JSON.stringify([
          { jsonrpc: "2.0", id: 700 + i, method: "resources/read", params: { uri: "obj://ws1/batch" } },
          {
            jsonrpc: "2.0",
            id: 800 + i,
            method: "tools/call",
            params: { name: "compute_submit", arguments: { target: "op://command/sh", args: { args: ["-c", "sleep 600"] } } },
          },
        ]);
        const sock = rawPost(http, host.sid, batch, true);
        socks.push(sock);
        sock.on("data", () => {});
        await until(() => load().unreadBytes > 0 && load().calls === 1, 60_000, `round ${i}: the read answered`);
        sock.destroy();
        await until(() => load().calls === 0 && load().unreadBytes === 0, 60_000, `round ${i}: the call cancelled`);
      };
      await round(0);
      const before = held();
      for (let i = 1; i <= 6; i++) await round(i);
      // Six answers of ~5.6 MB each were kept until the session's end: the budget had released them.
      await until(() => held() - before < 2 * answer, 30_000, "no answer of the closed batches held");
      assert.match(await host.send("tools/list", {}), /"tools"/);
      await host.end();
    } finally {
      for (const x of socks) x.destroy();
      await http.close();
    }
  });

  it("counts tools/list answers and refusals against a host's unread bounds, serves one request per connection and bounds batches; others are served", async () => {
    const MAX_UNREAD = 256 * 1024;
    const g = await gatewayOn(k, files, { maxUnreadBytesPerSession: MAX_UNREAD });
    const http = await serveHttp(g.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    const socks: Socket[] = [];
    try {
      const honest = await connect(http);
      const answer = JSON.stringify(await honest.listTools()).length + 200;
      const hostile = await rawSession(http);
      const load = () => g.gateway.hostLoads()[1] as ReturnType<typeof g.gateway.hostLoads>[0];
      const { port } = new URL(http.url);
      // Connections never read, each with requests pipelined: every POST a full batch of tools/list.
      const CONNS = 24;
      const PIPE = 8;
      const BATCH = 32;
      for (let c = 0; c < CONNS; c++) {
        let wire = "";
        for (let p = 0; p < PIPE; p++) {
          const body = JSON.stringify(
            Array.from({ length: BATCH }, (_, i) => ({ jsonrpc: "2.0", id: `c${c}p${p}L${i}`, method: "tools/list" })),
          );
          wire += `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: ${hostile.sid}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
        }
        const sock = tcp(Number(port), "127.0.0.1");
        sock.pause();
        sock.on("error", () => {});
        sock.write(wire);
        socks.push(sock);
      }
      // One request at a time on a connection: one behind another not yet answered is refused
      // (503); the others are served once the answer before them was handed on. Each served
      // batch's calls are each run or refused at the bounds.
      let most = 0;
      await until(
        () => {
          most = Math.max(most, g.gateway.totalLoad().unreadBytes);
          const l = load();
          return (l.served + l.refused) / BATCH + http.pipelinedRefused() === CONNS * PIPE && l.calls === 0;
        },
        60_000,
        "every request refused as pipelined or its batch handled",
      ).catch((e) => {
        throw new Error(`${e.message}: ${JSON.stringify(load())}, ${http.pipelinedRefused()} pipelined refused`);
      });
      assert.ok(http.pipelinedRefused() > 0, "pipelined requests are refused");
      assert.ok(load().refused > 0, `tools/list is refused past the bounds: ${JSON.stringify(load())}`);
      // Past the bound only calls already in flight (16) and refusals (small) were added.
      assert.ok(most <= MAX_UNREAD + 16 * answer + CONNS * BATCH * 300, `${most} bytes unread at most`);
      assert.equal(g.gateway.totalLoad().unreadBytes, load().unreadBytes + (g.gateway.hostLoads()[0]?.unreadBytes ?? 0));
      // A batch over maxBatch is refused whole; another host is served meanwhile.
      const big = Array.from({ length: BATCH + 1 }, (_, i) => ({ jsonrpc: "2.0", id: `big${i}`, method: "ping" }));
      const r = await fetch(http.url, {
        method: "POST",
        headers: {
          authorization: `Bearer ${BEARER}`,
          ...JSON_SSE,
          "mcp-session-id": hostile.sid,
          "mcp-protocol-version": "2025-06-18",
        },
        body: JSON.stringify(big),
      });
      assert.equal(r.status, 400);
      assert.match(await r.text(), /at most 32 messages/);
      assert.ok((await honest.listTools()).tools.length > 0);
      for (const s of socks.splice(0)) s.destroy();
      await until(() => load().unreadBytes === 0, 30_000, "the unread answers dropped with their connections");
      assert.match(await hostile.send("tools/list", {}), /"tools"/);
      await hostile.end();
      await honest.end();
    } finally {
      for (const s of socks) s.destroy();
      await http.close();
      await g.close();
    }
  });

  it("queues no notice for a host that does not read its GET stream; it gets the latest change when it reads again", async () => {
    // Long names make large notices: each change of the object is ~2 KB for every session.
    const uri = `obj://ws1/${"n".repeat(1900)}`;
    await gw.client.storage.write(uri, "0");
    // A gateway of its own: 80,000 notices' worth of kernel events are not the other tests' load.
    const g = await gatewayOn(k, files);
    const http = await serveHttp(g.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    const socks: Socket[] = [];
    try {
      const { port } = new URL(http.url);
      const hosts = [];
      for (let i = 0; i < 4; i++) {
        const h = await rawSession(http);
        assert.match(await h.send("resources/subscribe", { uri }), /"result":\{\}/);
        // The GET stream, never read.
        const sock = tcp(Number(port), "127.0.0.1");
        sock.pause();
        socks.push(sock);
        sock.write(
          `GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nAccept: text/event-stream\r\nMcp-Session-Id: ${h.sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n\r\n`,
        );
        hosts.push(h);
      }
      // Another persona writes (the admin: its records are not hank's).
      const writer = await KernelClient.connect({
        socket: join(k.home, "kernel.sock"),
        identity: join(k.home, "admin.identity"),
        tokens: [readFileSync(join(k.home, "admin.token"), "utf8")],
        reconnect: false,
      });
      await writer.storage.write(uri, "1");
      const before = held();
      let last = 0;
      for (let i = 0; i < 20_000; i += 50) {
        const ws = await Promise.all(Array.from({ length: 50 }, (_, j) => writer.storage.write(uri, String(i + j))));
        last = Math.max(last, ...ws.map((w) => w.generation));
      }
      await writer.close();
      // Every change was a notice for each of the four sessions (~10 MB each, past what their
      // sockets hold): they were queued in the gateway until the host read or its session ended.
      await until(() => held() - before < 8 * 1024 * 1024, 30_000, "nothing queued for the hosts that do not read");
      // A host that reads again is told of the latest change.
      const reader = socks[0] as Socket;
      let said = "";
      reader.on("data", (d) => {
        said = (said + d).slice(-100_000);
      });
      reader.resume();
      await until(() => said.includes(`"kpip/generation":${last}`), 60_000, "the latest change told");
      for (const h of hosts) await h.end();
      await until(() => g.gateway.watches.uris.length === 0, 30_000, "the watches released");
    } finally {
      for (const x of socks) x.destroy();
      await http.close();
      await g.close();
    }
  });

  it("keeps only the newest progress notice of a call unread for a host that does not read its POST stream", async () => {
    // Past what the sockets hold (~4 MB here): the stream backs up in the gateway behind it.
    const SIZE = 8 * 1024 * 1024;
    await gw.client.storage.putLarge("obj://ws1/big8", [randomBytes(SIZE)], { size: SIZE });
    // Polled often: ticks of the op's progress come from the polls.
    const g = await gatewayOn(k, files, { pollMaxMs: 50 });
    const http = await serveHttp(g.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    let sock: Socket | undefined;
    try {
      const h = await rawSession(http);
      const polls = async () => {
        await new Promise((r) => setTimeout(r, 200)); // not a record read every 20 ms
        return (await k.audit("hank")).filter((r) => r.op === "op.status").length;
      };
      const before = await polls();
      const batch = [
        { jsonrpc: "2.0", id: 1, method: "resources/read", params: { uri: "obj://ws1/big8" } },
        {
          jsonrpc: "2.0",
          id: 2,
          method: "tools/call",
          params: {
            name: "compute_submit",
            arguments: { target: "op://command/sh", args: { args: ["-c", "sleep 600"] } },
            _meta: { progressToken: "p" },
          },
        },
      ];
      sock = rawPost(http, h.sid, JSON.stringify(batch), false);
      // 60 polls at most 250 ms apart (the timer never fires early): over 14 s of the op
      // running, a progress notice at least every 1.25 s.
      await until(async () => (await polls()) - before >= 60, 120_000, "the op followed for a while");
      // The op is cancelled (by the same persona, not the host): the call is answered into the
      // stream the host never read.
      // The newest op.status: the kernel is shared with earlier tests, whose polls are older.
      const op = (await k.audit("hank")).filter((r) => r.op === "op.status").at(-1)?.target ?? "";
      assert.equal(await gw.client.ops.cancel(op), true);
      await until(() => g.gateway.hostLoads()[0]?.calls === 0, 60_000, "the call answered");
      // It reads now: behind the large answer, no more than the newest notice was kept.
      const chunks: Buffer[] = [];
      let tail = "";
      sock.on("data", (d: Buffer) => {
        chunks.push(d);
        tail = (tail + d.toString("latin1")).slice(-8192);
      });
      sock.resume();
      await until(() => tail.includes('"id":2'), 60_000, "the call's answer read");
      const text = Buffer.concat(chunks).toString("latin1");
      const large = text.indexOf('"id":1}');
      assert.ok(large > SIZE, "the large answer came first");
      const behind = text.slice(large).split('"notifications/progress"').length - 1;
      assert.ok(behind <= 1, `${behind} progress notices were queued behind the large answer`);
      assert.match(text.slice(large), /"id":2/);
      await h.end();
    } finally {
      sock?.destroy();
      await http.close();
      await g.close();
    }
  });

  it("a second POST naming a call still in use is refused, and closing it neither releases that call's unread answer nor cancels it", async () => {
    const SIZE = 4 * 1024 * 1024;
    await gw.client.storage.putLarge("obj://ws1/dup", [randomBytes(SIZE)], { size: SIZE });
    const g = await gatewayOn(k, files, { maxUnreadBytesPerSession: 64 * 1024 * 1024 });
    const http = await serveHttp(g.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    const socks: Socket[] = [];
    try {
      const hostile = await rawSession(http);
      const load = () => g.gateway.hostLoads()[0] as ReturnType<typeof g.gateway.hostLoads>[0];
      const { port } = new URL(http.url);
      const post = (body: string, read: boolean) => {
        const sock = tcp(Number(port), "127.0.0.1");
        if (!read) sock.pause();
        socks.push(sock);
        sock.write(
          `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: ${hostile.sid}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
        return sock;
      };
      const read = JSON.stringify({ jsonrpc: "2.0", id: 500, method: "resources/read", params: { uri: "obj://ws1/dup" } });
      // Call 500's answer waits, unread, on a connection the host never reads.
      post(read, false);
      await until(() => load().served >= 1 && load().calls === 0 && load().unreadBytes > 0, 60_000, "the answer held");
      const unread = load().unreadBytes;
      // The same id again on another connection: refused as still in use; then that connection closes.
      const dup = post(read, true);
      let said = "";
      dup.on("data", (d) => {
        said += d;
      });
      await until(() => /still in use/.test(said), 60_000, "the duplicate refused");
      dup.destroy();
      // A round trip after that close: the host's session is still served.
      assert.match(await hostile.send("tools/list", {}), /"tools"/);
      assert.equal(load().unreadBytes, unread, "the first call's answer still counts until its own connection ends");
      await hostile.end();
    } finally {
      for (const s of socks) s.destroy();
      await http.close();
      await g.close();
    }
  });

  it("cancels a call whose connection the host closes while it runs, and frees its place", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    const before = gw.gateway.hostLoads().length;
    const sock = { s: undefined as Socket | undefined };
    try {
      const host = await rawSession(http);
      const load = () => gw.gateway.hostLoads()[before] as ReturnType<typeof gw.gateway.hostLoads>[0];
      const body = JSON.stringify({
        jsonrpc: "2.0",
        id: 7,
        method: "tools/call",
        params: { name: "compute_submit", arguments: { target: "op://command/sh", args: { args: ["-c", "sleep 600"] } } },
      });
      const { port } = new URL(http.url);
      sock.s = tcp(Number(port), "127.0.0.1");
      sock.s.write(
        `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${BEARER}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: ${host.sid}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      // Counted from now: other tests of this persona followed and cancelled ops too.
      const count = async (op: string) => (await k.audit("hank")).filter((r) => r.op === op && r.status === "SUCCESS").length;
      const [statuses, cancels] = [await count("op.status"), await count("op.cancel")];
      await until(async () => (await count("op.status")) > statuses, 60_000, "the op to be followed");
      assert.equal(load().calls, 1);
      sock.s.destroy();
      await until(() => load().calls === 0, 60_000, "the call to end");
      await until(async () => (await count("op.cancel")) > cancels, 60_000, "op.cancel");
      await host.end();
    } finally {
      sock.s?.destroy();
      await http.close();
    }
  });

  it("refuses arguments nested thousands deep with InvalidParams, not a stack overflow; the kernel is never asked", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const host = await rawSession(http);
      const headers = {
        authorization: `Bearer ${BEARER}`,
        ...JSON_SSE,
        "mcp-session-id": host.sid,
        "mcp-protocol-version": "2025-06-18",
      };
      const target = "obj://ws1/deep-probe";
      for (const n of [33, 5000, 200_000]) {
        const deep = "[".repeat(n) + "]".repeat(n);
        const body = `{"jsonrpc":"2.0","id":${n},"method":"tools/call","params":{"name":"storage_write","arguments":{"target":"${target}","args":{"data":${deep}}}}}`;
        const answer = await (await fetch(http.url, { method: "POST", headers, body })).text();
        assert.match(
          answer,
          new RegExp(`"code":${ErrorCode.InvalidParams},"message":"[^"]*storage_write: arguments nested deeper than 32 levels`),
        );
      }
      // A target the client refuses before sending is the host's input too.
      const dots = await host.send("tools/call", { name: "storage_read", arguments: { target: "obj://ws1/../x" } });
      assert.match(dots, new RegExp(`"code":${ErrorCode.InvalidParams},"message":"[^"]*path segment`));
      assert.deepEqual(
        (await k.audit("hank")).filter((r) => r.target === target),
        [],
        "no request reached the kernel",
      );
      assert.match(await host.send("tools/list", {}), /"tools"/);
      await host.end();
    } finally {
      await http.close();
    }
  });

  it("refuses arguments past the kernel's maxItems (100,000 keys in 1 MB) with InvalidParams naming the bound before converting them; the same host's next call and another host are served", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const hostile = await rawSession(http);
      const other = await connect(http);
      const keys = (n: number) => {
        const data: Record<string, number> = {};
        for (let i = 0; i < n; i++) data[i.toString(36)] = 0;
        return data;
      };
      // Requests the kernel saw (an op with effects has two records, intent and outcome).
      const requests = async () => new Set((await k.audit("hank")).map((r) => r.requestId).filter((id) => id !== null)).size;
      const before = await requests();
      // ~850 KB of JSON, under the gateway's 1 MiB: the kernel would refuse the intent anyway.
      const flood = await hostile.send("tools/call", {
        name: "event_emit",
        arguments: { target: "topic://keys-probe", args: { data: keys(100_000) } },
      });
      assert.match(
        flood,
        new RegExp(
          `"code":${ErrorCode.InvalidParams},"message":"[^"]*event_emit: arguments making a request of more than 100000 data items[^"]*maxItems[^"]*","data":\\{"bound":"maxItems","limit":100000\\}`,
        ),
      );
      // {op, target, args: {data: {…}}} is 9 items and 2 a key: 49,995 keys are 99,999 items,
      // which the kernel takes; one key more is refused by the gateway, never sent.
      const atBound = await hostile.send("tools/call", {
        name: "event_emit",
        arguments: { target: "topic://keys-probe", args: { data: keys(49_995) } },
      });
      assert.match(atBound, /"kpip\/status":"SUCCESS"/);
      const past = await hostile.send("tools/call", {
        name: "event_emit",
        arguments: { target: "topic://keys-probe", args: { data: keys(49_996) } },
      });
      assert.match(past, new RegExp(`"code":${ErrorCode.InvalidParams},"message":"[^"]*more than 100000 data items`));
      assert.equal(await requests(), before + 1, "only the call within the bound reached the kernel");
      // The same host's next call works, and so does another host's.
      const next = await hostile.send("tools/call", {
        name: "storage_write",
        arguments: { target: "obj://ws1/after-keys", args: { data: "ok" } },
      });
      assert.match(next, /"kpip\/status":"SUCCESS"/);
      const read = await other.callTool({ name: "storage_read", arguments: { target: "obj://ws1/after-keys" } });
      assert.ok(!read.isError, JSON.stringify(read));
      await hostile.end();
      await other.end();
    } finally {
      await http.close();
    }
  });

  it("refuses Object.prototype member names as arguments with InvalidParams; the kernel is never asked", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const host = await connect(http);
      const target = "obj://ws1/proto-probe";
      for (const name of ["constructor", "toString", "hasOwnProperty", "__proto__", "valueOf"]) {
        const args = JSON.parse(`{${JSON.stringify(name)}: 1}`);
        const e = await mcpError(host.callTool({ name: "storage_read", arguments: { target, args } }));
        assert.equal(e.code, ErrorCode.InvalidParams, `${name}: ${e.message}`);
        assert.match(e.message, new RegExp(`storage\\.read takes no argument "${name}"`));
      }
      // A required argument hidden behind __proto__ is still missing.
      const hidden = JSON.parse('{"__proto__": {"data": "x"}}');
      const e = await mcpError(host.callTool({ name: "storage_write", arguments: { target, args: hidden } }));
      assert.equal(e.code, ErrorCode.InvalidParams);
      const missing = await mcpError(host.callTool({ name: "storage_write", arguments: { target, args: {} } }));
      assert.match(missing.message, /args\.data is required/);
      // Nor is a target found on the prototype.
      const noTarget = await mcpError(
        host.callTool({ name: "storage_read", arguments: JSON.parse('{"__proto__": {"target": "obj://ws1/x"}}') }),
      );
      assert.equal(noTarget.code, ErrorCode.InvalidParams);
      assert.deepEqual(
        (await k.audit("hank")).filter((r) => r.target === target),
        [],
        "no request reached the kernel",
      );
      await host.end();
    } finally {
      await http.close();
    }
  });

  it("refuses text holding a lone surrogate with InvalidParams, never sending it as U+FFFD; the kernel is never asked", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const host = await connect(http);
      const target = "topic://surrogates";
      const emits = async () => (await k.audit("hank")).filter((r) => r.target === target || r.op === null).length;
      const before = await emits();
      // JSON carries them escaped ("\ud800"); JSON.parse gives the gateway the lone surrogates back.
      for (const data of [
        "x\ud800",
        "\udfffy",
        { "k\ud800": 1 },
        [`${"a".repeat(5000)}\ud800`],
        { "a\ud800": 1, "a\udbff": 2 },
      ]) {
        const e = await mcpError(host.callTool({ name: "event_emit", arguments: { target, args: { data } } }));
        assert.equal(e.code, ErrorCode.InvalidParams, e.message);
        assert.match(e.message, /lone surrogate/);
      }
      assert.equal(await emits(), before, "no request reached the kernel (once, as U+FFFD, or refused for a duplicate key)");
      // A pair is one character: sent as it is.
      const ok = await host.callTool({ name: "event_emit", arguments: { target, args: { data: "\ud83d\ude00" } } });
      assert.notEqual(ok.isError, true, JSON.stringify(ok));
      await host.end();
    } finally {
      await http.close();
    }
  });

  it("answers a body that is not UTF-8 with a parse error, never as U+FFFD in the host's text; the kernel is never asked", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const s = await rawSession(http);
      const target = "topic://not-utf8";
      const emits = async () => (await k.audit("hank")).filter((r) => r.target === target).length;
      const headers = {
        authorization: `Bearer ${BEARER}`,
        ...JSON_SSE,
        "mcp-session-id": s.sid,
        "mcp-protocol-version": "2025-06-18",
      };
      const call = (data: string) =>
        `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"event_emit","arguments":{"target":"${target}","args":{"data":${data}}}}}`;
      // 0xff and 0xfe are never UTF-8: decoded leniently, both were U+FFFD, "x\xff" sent as "x\uFFFD",
      // and the two keys one ({"a\uFFFD": 2}, the first dropped by JSON.parse).
      for (const data of ['"x\xff"', '{"a\xff":1,"a\xfe":2}']) {
        const body = Buffer.from(call(data), "latin1");
        const r = await fetch(http.url, { method: "POST", headers, body });
        const text = await r.text();
        assert.equal(r.status, 400, text);
        assert.match(text, /-32700|Parse error/);
      }
      assert.equal(await emits(), 0, "no request reached the kernel");
      // The same call in UTF-8 is served.
      const ok = await fetch(http.url, { method: "POST", headers, body: Buffer.from(call('"x\u00ff"'), "utf8") });
      assert.match(await ok.text(), /SUCCESS/);
      assert.equal(await emits(), 2, "its intent and outcome");
      assert.equal(await s.end(), 200);
    } finally {
      await http.close();
    }
  });

  it("answers a resource URI the client refuses (.., a space, over 2048 bytes) with InvalidParams; the kernel is never asked", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const host = await connect(http);
      const asked = async () => (await k.audit("hank")).filter((r) => r.op === "storage.read" || r.op === "storage.watch").length;
      const before = await asked();
      for (const uri of ["obj://ws1/../ws2/x", "obj://ws1/a b", `obj://ws1/${"a/".repeat(1100)}x`]) {
        const read = await mcpError(host.readResource({ uri }));
        assert.equal(read.code, ErrorCode.InvalidParams, `read ${uri.slice(0, 30)}: ${read.message}`);
        assert.doesNotMatch(read.message, /unavailable/);
        const sub = await mcpError(host.subscribeResource({ uri }));
        assert.equal(sub.code, ErrorCode.InvalidParams, `subscribe ${uri.slice(0, 30)}: ${sub.message}`);
      }
      assert.equal(await asked(), before, "no request reached the kernel");
      assert.deepEqual(gw.gateway.watches.uris, []);
      await host.end();
    } finally {
      await http.close();
    }
  });
});

describe("the gateway's tools", () => {
  it("offers no op that holds session state: as the kernel's table declares it, or the catalogue for a kernel that does not say", async () => {
    const op = { targets: ["kernel"], args: {}, idempotent: false, effects: false };
    const rc = new RecordingClient({
      rights: [{ ops: ["x.*", "token.bind"], targets: ["kernel://", "token://**"] }],
      table: [
        // An embedder's op this gateway has never heard of, declared by the kernel.
        { op: "x.hold", description: "holds a lease on the session", sessionState: "a lease on the session", ...op },
        { op: "x.plain", description: "holds nothing", ...op },
        // An older kernel's table: no sessionState sent; the catalogue says so.
        { op: "token.bind", description: "bind", ...op, targets: ["token"] },
      ],
    });
    const gateway = await McpGateway.open(rc as unknown as KernelClient);
    try {
      assert.deepEqual(gateway.toolNames.sort(), ["system_describe", "system_health", "x_plain"]);
      const e = await mcpError(
        gateway.callTool(
          "x_hold",
          { target: "kernel://" },
          { execution: "t", signal: new AbortController().signal, progressToken: undefined, notify: async () => {} },
        ),
      );
      assert.equal(e.code, ErrorCode.InvalidParams);
      assert.equal(rc.sent.length, 0, "the kernel is never asked");
    } finally {
      await gateway.close();
    }
  });
});

describe("a host session's refusal rate", () => {
  it("holds a host past its own rate, hosts refused lately and those opened meanwhile past the total; a host not refused goes on", async () => {
    let now = 0;
    const clock = () => now;
    const total = new RefusalBucket(1, clock); // bursts of 5
    const refused = () => Promise.resolve("refused");
    const honest = new RefusalRate(100, total, clock);
    const a = new RefusalRate(1, total, clock);
    for (let i = 0; i < 5; i++) await a.run(refused, () => true);
    const own = await mcpError(a.run(refused, () => true));
    assert.equal(own.code, HOST_BUSY);
    assert.match(own.message, /refused this host session's calls more than 1 times a second: retry in \d+ s/);
    const b = new RefusalRate(100, total, clock);
    const shared = await mcpError(b.run(refused, () => true));
    assert.match(shared.message, /refused the gateway's calls more than 1 times a second/);
    assert.deepEqual(shared.data, { retryable: true });
    assert.equal(
      await honest.run(
        () => Promise.resolve("ok"),
        () => false,
      ),
      "ok",
    );
    now += 5_000;
    assert.equal(await b.run(refused, () => true), "refused");
    assert.equal(a.refused + b.refused, 2);
  });

  it("by default the refusal rates are on a monotonic clock: a wall clock stepped an hour ahead refills no bucket", async () => {
    const realNow = Date.now;
    // The wall clock, as the buckets would read it (a default of Date.now is read at their construction).
    let wall = realNow();
    Date.now = () => wall;
    try {
      // A fifth of a refusal a second (bursts of 1), drawn down to its floor (-1): ten seconds from room again.
      const host = new RefusalRate(0.2, new RefusalBucket(10));
      for (let i = 0; i < 3; i++) host.note();
      const refused = () => Promise.resolve("refused");
      assert.equal((await mcpError(host.run(refused, () => true))).code, HOST_BUSY);
      // NTP, `date -s`, a VM resumed: the wall clock an hour ahead (the buckets on Date.now: full again).
      wall += 3_600_000;
      assert.equal((await mcpError(host.run(refused, () => true))).code, HOST_BUSY, "its bucket is as it was");
    } finally {
      Date.now = realNow;
    }
  });

  it("a wall clock stepped back is no time passed, never a debt: a host session's calls go on (not HOST_BUSY for the step's length)", async () => {
    let now = 3_600_000;
    const clock = () => now;
    const total = new RefusalBucket(10, clock);
    const host = new RefusalRate(2, total, clock);
    const ok = () => Promise.resolve("ok");
    assert.equal(await host.run(ok, () => false), "ok");
    // NTP correcting a clock that ran ahead, an operator's `date -s`, a VM resumed: ten minutes back.
    now -= 600_000;
    assert.equal(await host.run(ok, () => false), "ok", "a host never refused is not held back");
    // Its refusals are still counted from there: ten (its burst), then HOST_BUSY, as without a step.
    const refused = () => Promise.resolve("refused");
    for (let i = 0; i < 10; i++) await host.run(refused, () => true);
    assert.equal((await mcpError(host.run(refused, () => true))).code, HOST_BUSY);
    now += 5_000;
    assert.equal(await host.run(refused, () => true), "refused", "its rate refills as the clock goes on");
  });

  it("a wall clock stepped back does not keep a host refused once 'refused lately' for the step's length: a minute after the step, its calls in flight are not held as possible refusals", async () => {
    let now = 3_600_000;
    const clock = () => now;
    const total = new RefusalBucket(10, clock);
    const host = new RefusalRate(2, total, clock);
    assert.equal(
      await host.run(
        () => Promise.resolve("refused"),
        () => true,
      ),
      "refused",
    );
    // Ten minutes back (a call sees it), then a minute and more goes by: its one refusal is no longer recent.
    now -= 600_000;
    assert.equal(
      await host.run(
        () => Promise.resolve("ok"),
        () => false,
      ),
      "ok",
    );
    now += 61_000;
    // Twelve long calls at once (within the host's 16): none is a possible refusal of a host not refused lately.
    const busy: unknown[] = [];
    for (let i = 0; i < 12; i++)
      host
        .run(
          () => new Promise<string>(() => {}),
          () => false,
        )
        .catch((e: { code?: unknown }) => busy.push(e.code));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(busy, [], "no call HOST_BUSY: the refusal was a minute ago, not ten minutes ahead");
  });
});

describe("a call's progress notices", () => {
  it("while its stream is blocked only the newest waits, sent when the host reads again; none once the call has answered", async () => {
    const sent: unknown[] = [];
    let blocked = true;
    let wake = () => {};
    const outlet = {
      blocked: () => blocked,
      ready: () =>
        new Promise<void>((r) => {
          wake = r;
        }),
    };
    const p = new CoalescedProgress(
      async (n) => {
        sent.push(n.params);
      },
      () => outlet,
    );
    const notice = (progress: number) =>
      ({ method: "notifications/progress", params: { progressToken: "t", progress } }) as const;
    for (let i = 1; i <= 5; i++) await p.notify(notice(i));
    assert.deepEqual(sent, []);
    blocked = false;
    wake();
    await until(() => sent.length === 1, 10_000, "the newest sent");
    assert.deepEqual(sent, [{ progressToken: "t", progress: 5 }]);
    await p.notify(notice(6));
    assert.equal(sent.length, 2);
    blocked = true;
    await p.notify(notice(7));
    p.end();
    blocked = false;
    wake();
    await p.notify(notice(8));
    await new Promise((r) => setImmediate(r));
    assert.equal(sent.length, 2, "nothing after the call answered");
  });

  it("a send that fails once the blocked stream is read again (the host gone) is no unhandled rejection: the gateway goes on", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on("unhandledRejection", onUnhandled);
    try {
      let blocked = true;
      let wake = () => {};
      const outlet = {
        blocked: () => blocked,
        ready: () =>
          new Promise<void>((r) => {
            wake = r;
          }),
      };
      let tried = 0;
      const p = new CoalescedProgress(
        async () => {
          tried++;
          throw new Error("Not connected");
        },
        () => outlet,
      );
      await p.notify({ method: "notifications/progress", params: { progressToken: "t", progress: 1 } });
      blocked = false;
      wake();
      await until(() => tried === 1, 10_000, "the delayed send tried");
      // An unhandled rejection is reported after the microtasks of the turn it was made in.
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });
});

describe("a host session's budget", () => {
  it("refuses a call past maxCalls in flight, retryably, and takes calls again as they end", async () => {
    const b = new HostBudget(2, 1024);
    const ends: (() => void)[] = [];
    const start = (id: number) => b.run(id, () => new Promise<void>((r) => ends.push(r)));
    const pending = [start(1)];
    const reused = await mcpError(b.run(1, async () => {}));
    assert.equal(reused.code, ErrorCode.InvalidRequest, "an id in use is refused");
    pending.push(start(2));
    const e = await mcpError(b.run(3, async () => {}));
    assert.equal(e.code, HOST_BUSY);
    assert.match(e.message, /2 calls in flight .*limit is 2/);
    assert.deepEqual(e.data, { retryable: true });
    for (const end of ends) end();
    await Promise.all(pending);
    await b.run(3, async () => {});
    assert.deepEqual(b.load, { calls: 0, unreadBytes: 0, served: 3, refused: 1 });
    // Over HTTP an answer counts until its response ends.
    b.tracksDelivery = true;
    await b.run(4, async () => "x".repeat(2000));
    const refusedAfter = await mcpError(b.run(5, async () => {}));
    assert.match(refusedAfter.message, /bytes of answers not yet read/);
    assert.equal(b.delivered(4), false);
    assert.equal(b.load.unreadBytes, 0);
  });
});

describe("a host whose calls the kernel refuses", () => {
  // A low flood bound: without the gateway's rate, the hostile host ends the shared session in a second.
  const k = new KernelHome({ auditRefusalFloodMax: 200 });
  let files: { identityFile: string; tokenFile: string };
  /** A persona that may submit and fetch results, not op.status: the gateway cannot follow its DEFERRED ops. */
  let blind: { identityFile: string; tokenFile: string };
  before(async () => {
    await k.start();
    files = await k.persona("rita", RIGHTS);
    blind = await k.persona("fred", [
      { ops: ["system.describe"], targets: ["kernel://"] },
      { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
      { ops: ["compute.submit", "op.result"], targets: ["op://**"] },
    ]);
  });
  after(async () => {
    await k.dispose();
  });

  it("counts the refusals a call draws besides its answer (op.status of a DEFERRED op it cannot follow): HOST_BUSY before the kernel's flood bound ends the session every host shares", async () => {
    const g = await gatewayOn(k, blind);
    const http = await serveHttp(g.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const victim = await connect(http);
      const hostile = await rawSession(http);
      const submitted = await hostile.send("tools/call", {
        name: "compute_submit",
        arguments: { target: "op://command/sh", args: { args: ["-c", "sleep 600"] } },
      });
      // Handed over DEFERRED as it is: the gateway's op.status was refused (PERMISSION).
      assert.match(submitted, /cannot follow op:\/\/[^:]+: op.status answered PERMISSION/);
      const op = (/(op:\/\/[0-9a-zA-Z-]+)/.exec(submitted) as RegExpExecArray)[1] as string;
      // op.result of the running op answers DEFERRED, which the gateway follows with op.status:
      // one refusal per call, each answered DEFERRED (no FAILURE the host's rate saw).
      const answers = { busy: 0, deferred: 0 };
      await Promise.all(
        [0, 1, 2, 3].map(async () => {
          for (let i = 0; i < 100; i++) {
            const a = await hostile.send("tools/call", { name: "op_result", arguments: { target: op } });
            if (a.includes(`"code":${HOST_BUSY}`)) answers.busy++;
            else if (a.includes("cannot follow")) answers.deferred++;
            else assert.fail(a);
          }
        }),
      );
      assert.equal(answers.busy + answers.deferred, 400);
      // A burst of 10 for the session, and 2 a second after it: far under the kernel's flood bound.
      assert.ok(answers.deferred < 60, JSON.stringify(answers));
      // The kernel session every host shares is the same one, and the victim is served.
      assert.equal(g.client.connections, 1);
      const write = await victim.callTool({
        name: "storage_write",
        arguments: { target: "obj://ws1/f", args: { data: { $bytes: "aGk=" } } },
      });
      assert.ok(!write.isError, JSON.stringify(write));
      await hostile.end();
      await victim.end();
    } finally {
      await http.close();
      await g.close();
    }
  });

  it("is throttled with HOST_BUSY at its refusal rate, before the kernel's flood bound ends the session every host shares; others are served", async () => {
    // The gateway's clock stands still unless the test steps it: what is asserted of the rate does
    // not depend on how long the run takes on a busy machine.
    let now = Date.now();
    const g = await gatewayOn(k, files, { clock: () => now });
    const http = await serveHttp(g.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER });
    try {
      const victim = await connect(http);
      const write = await victim.callTool({
        name: "storage_write",
        arguments: { target: "obj://ws1/v", args: { data: { $bytes: "aGk=" } } },
      });
      assert.ok(!write.isError, JSON.stringify(write));
      const hostile = await Promise.all([0, 1, 2].map(() => rawSession(http)));
      const refusedRead = (h: (typeof hostile)[number] | undefined) =>
        h?.send("tools/call", { name: "storage_read", arguments: { target: "obj://other/secret" } }) ?? "";
      const answers = { busy: 0, refused: 0 };
      // Three hostile sessions, four callers each, 600 calls the kernel refuses (another workspace).
      await Promise.all(
        hostile.flatMap((h) =>
          [0, 1, 2, 3].map(async () => {
            for (let i = 0; i < 50; i++) {
              const a = await refusedRead(h);
              if (a.includes(`"code":${HOST_BUSY}`)) answers.busy++;
              else if (a.includes("FAILURE")) answers.refused++;
              else assert.fail(a);
            }
          }),
        ),
      );
      assert.equal(answers.busy + answers.refused, 600);
      // No time passed on the gateway's clock: each host session drew at most its burst of 10
      // (calls in flight hold a place once it was refused), however long the run took.
      assert.ok(answers.refused <= 30, JSON.stringify(answers));
      assert.ok(g.gateway.refusalThrottled().reduce((a, b) => a + b, 0) === answers.busy);
      const busy = await refusedRead(hostile[0]);
      const retry = busy.match(
        /refused this host session's calls more than 2 times a second: retry in (\d+) s.*"retryable":true/,
      );
      assert.ok(retry, busy);
      // After the seconds it was told, the host is served again, at 2 refusals a second.
      now += Number(retry[1]) * 1000;
      let served = 0;
      for (let a = await refusedRead(hostile[0]); !a.includes(`"code":${HOST_BUSY}`); a = await refusedRead(hostile[0])) {
        assert.match(a, /FAILURE/);
        served++;
        assert.ok(served <= 2 * Number(retry[1]), `served ${served} in ${retry[1]} s`);
      }
      assert.ok(served >= 1, "not served after the retry time it was given");
      // The kernel session every host shares is the same one, and the victim is served.
      assert.equal(g.client.connections, 1);
      const read = await victim.callTool({ name: "storage_read", arguments: { target: "obj://ws1/v" } });
      assert.ok(!read.isError, JSON.stringify(read));
      for (const h of hostile) await h.end();
      await victim.end();
    } finally {
      await http.close();
      await g.close();
    }
  });
});
