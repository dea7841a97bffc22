import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import net from "node:net";
import { describe, it } from "node:test";
import nodeTls from "node:tls";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { serializeIdentity } from "@kpip/protocol";
import {
  GRPC_MAX_HEADER_FIELDS,
  GRPC_MAX_HEADER_LIST_BYTES,
  GRPC_REFUSED_STREAMS_PER_CONNECTION,
} from "../src/transport/grpc.js";
import { GRPC_OVERHEAD_BURST_BYTES } from "../src/transport/h2-overhead.js";
import type { TestKernel } from "./harness.js";
import { adminIdentity, REPO_ROOT, until, withKernel } from "./harness.js";
import { allAudit, H2_PREFACE, h2Frame, onH2Frames, sleep } from "./wire.js";

// Attacks on the gRPC listener below gRPC: raw HTTP/2 frames from an unauthenticated peer.

const HEADERS = 1;
const PRIORITY = 2;
const RST_STREAM = 3;
const SETTINGS = 4;
const PING = 6;
const GOAWAY = 7;
const WINDOW_UPDATE = 8;
const CONTINUATION = 9;
const ENHANCE_YOUR_CALM = 0xb;

const frame = h2Frame;

/** An HPACK integer with an n-bit prefix (RFC 7541 §5.1). */
function hpackInt(n: number, bits: number, first: number): Buffer {
  const max = (1 << bits) - 1;
  if (n < max) return Buffer.from([first | n]);
  const out = [first | max];
  let rest = n - max;
  while (rest >= 128) {
    out.push((rest & 127) | 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return Buffer.from(out);
}

/** A literal field with a literal name: 0x00 never indexed into the table, 0x40 added to the dynamic table. */
function literal(name: string, value: string, first = 0x00): Buffer {
  const n = Buffer.from(name);
  const v = Buffer.from(value);
  return Buffer.concat([Buffer.from([first]), hpackInt(n.length, 7, 0), n, hpackInt(v.length, 7, 0), v]);
}

/** The header block of a KPIP session call, plus `extra`. */
function callBlock(extra: Buffer[] = []): Buffer {
  return Buffer.concat([
    literal(":method", "POST"),
    literal(":scheme", "http"),
    literal(":path", "/kpip.v1.Kernel/Session"),
    literal(":authority", "127.0.0.1"),
    literal("content-type", "application/grpc"),
    literal("te", "trailers"),
    ...extra,
  ]);
}

/** A header block as HEADERS then CONTINUATION frames of at most 16 KiB, END_HEADERS on the last. */
function headerFrames(stream: number, block: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let o = 0; o < block.length; o += 16384) {
    const last = o + 16384 >= block.length;
    out.push(frame(o === 0 ? HEADERS : CONTINUATION, last ? 0x4 : 0, stream, block.subarray(o, o + 16384)));
  }
  return Buffer.concat(out);
}

const rst = (stream: number) => frame(RST_STREAM, 0, stream, Buffer.from([0, 0, 0, 8])); // CANCEL

const tlsFile = (f: string) => fileURLToPath(new URL(`../../test/fixtures/tls/${f}`, import.meta.url));

interface Raw {
  raw: net.Socket;
  /** Frames received: [type, stream, code] (RST_STREAM: its code; GOAWAY: its code). */
  got: [number, number, number][];
  /** The kernel's SETTINGS entries. */
  settings: Map<number, number>;
  /** PING acknowledgements received. */
  pingAcks: () => number;
  closed: () => boolean;
}

/**
 * A raw HTTP/2 connection: the preface and an empty SETTINGS, then what the test writes. With
 * `ack` false it never acknowledges the kernel's SETTINGS (so Node holds it to none of them);
 * with `tls`, over TLS (the fixtures' CA, ALPN h2).
 */
async function rawH2(address: string, ack: boolean, tls = false): Promise<Raw> {
  const port = Number(address.slice(address.lastIndexOf(":") + 1));
  const raw = tls
    ? nodeTls.connect({
        host: "127.0.0.1",
        port,
        ca: readFileSync(tlsFile("ca.pem")),
        servername: "localhost",
        ALPNProtocols: ["h2"],
      })
    : net.connect({ host: "127.0.0.1", port });
  raw.on("error", () => {});
  let closed = false;
  raw.on("close", () => {
    closed = true;
  });
  await new Promise((r) => raw.once(tls ? "secureConnect" : "connect", r));
  let pingAcks = 0;
  const got: [number, number, number][] = [];
  const settings = new Map<number, number>();
  onH2Frames(raw, (type, flags, stream, payload, code) => {
    got.push([type, stream, code]);
    if (type === PING && flags & 1) pingAcks++;
    if (type === SETTINGS && !(flags & 1)) {
      for (let i = 0; i + 6 <= payload.length; i += 6) settings.set(payload.readUInt16BE(i), payload.readUInt32BE(i + 2));
      if (ack) raw.write(frame(SETTINGS, 1, 0, Buffer.alloc(0)));
    }
  });
  raw.write(Buffer.concat([H2_PREFACE, frame(SETTINGS, 0, 0, Buffer.alloc(0))]));
  return { raw, got, settings, pingAcks: () => pingAcks, closed: () => closed };
}

/** Writes `batch` on `c` again and again, as fast as its socket takes it, until the connection is closed; the bytes the kernel took. */
function flood(c: Raw, batch: Buffer): () => number {
  const pump = () => {
    while (!c.closed()) if (!c.raw.write(batch)) return void c.raw.once("drain", pump);
  };
  pump();
  return () => c.raw.bytesWritten - c.raw.writableLength;
}

/** Connections the kernel closed while open, by reason (kpip_grpc_connections_closed_total). */
async function closedConnections(t: TestKernel): Promise<Record<string, number>> {
  const m = await t.k.metrics?.grpcConnectionsClosed.get();
  return Object.fromEntries((m?.values ?? []).map((v) => [v.labels.reason as string, v.value]));
}

/** 1,000 frames HTTP/2 handles without telling JavaScript: WINDOW_UPDATE (+1) on the connection and PRIORITY on idle streams, alternately. */
const controlFrames = Buffer.concat(
  Array.from({ length: 1000 }, (_, i) =>
    i % 2
      ? frame(WINDOW_UPDATE, 0, 0, Buffer.from([0, 0, 0, 1]))
      : frame(PRIORITY, 0, 2 * (i % 100) + 101, Buffer.from([0, 0, 0, 0, 16])),
  ),
);

async function refusedStreams(t: TestKernel): Promise<Record<string, number>> {
  const m = await t.k.metrics?.grpcStreamsRefused.get();
  return Object.fromEntries((m?.values ?? []).map((v) => [v.labels.reason as string, v.value]));
}

async function refusedConnections(t: TestKernel): Promise<Record<string, number>> {
  const m = await t.k.metrics?.grpcConnectionsRefused.get();
  return Object.fromEntries((m?.values ?? []).map((v) => [v.labels.bound as string, v.value]));
}

/** The peer's next connection is closed as it arrives (before HTTP/2: it is over its stream rate), and counted once. */
async function assertNextConnectionRefused(t: TestKernel, address: string): Promise<void> {
  const next = await rawH2(address, true);
  await until(() => next.closed() || next.settings.size > 0, 30_000, "SETTINGS or a close");
  assert.ok(next.closed(), "a connection from the peer over its rate is closed as it arrives");
  assert.equal((await refusedConnections(t)).rate, 1);
}

/** The admin's client over gRPC at `address` (no reconnect). */
function grpcAdmin(t: TestKernel, address: string): Promise<KernelClient> {
  return KernelClient.connect({
    grpc: { address, insecure: true },
    identity: adminIdentity(t.k),
    tokens: [t.adminToken],
    reconnect: false,
  });
}

/**
 * A kernel whose peers may open one gRPC stream a second and an admin session opened first; `abuse`
 * gets a raw connection the kernel has sent SETTINGS on. After it the abuser's next connection must
 * be closed as it arrives (charged to its rate) and the session opened first still served.
 */
async function abuseChargedToRate(abuse: (t: TestKernel, raw: Raw) => Promise<void>): Promise<void> {
  await withKernel({ grpcListen: "127.0.0.1:0", grpcStreamPeerRate: 1, handshakeTimeoutMs: 60_000 }, async (t) => {
    const address = t.k.grpcAddress as string;
    const c = await grpcAdmin(t, address);
    try {
      const raw = await rawH2(address, true);
      await until(() => raw.settings.size > 0, 30_000, "the kernel's SETTINGS");
      await abuse(t, raw);
      await assertNextConnectionRefused(t, address);
      assert.equal((await c.system.health()).status, "ok");
    } finally {
      await c.close();
    }
  });
}

describe("the gRPC listener under HTTP/2 abuse", () => {
  it("an HPACK bomb (one 4 KiB table entry named 20 times, SETTINGS never acknowledged) closes its connection before the kernel sees the stream; more than 32 header fields is refused by Node; others served", async () => {
    await withKernel({ grpcListen: "127.0.0.1:0", handshakeTimeoutMs: 60_000 }, async (t) => {
      const address = t.k.grpcAddress as string;
      const c = await grpcAdmin(t, address);
      try {
        // ~150 bytes on the wire: the entry once, then 19 one-byte references to it (index 62), ~80 KiB decoded.
        const big = "a".repeat(4000);
        const refs = Array.from({ length: 19 }, () => hpackInt(62, 7, 0x80));
        assert.ok(6 + 20 <= GRPC_MAX_HEADER_FIELDS, "under the field bound: only the size bound stops it");
        const bomb = await rawH2(address, false);
        await until(() => bomb.settings.size > 0, 30_000, "the kernel's SETTINGS");
        // The bound is advertised (honoured by Node only once acknowledged, which this peer never does).
        assert.equal(bomb.settings.get(0x6), GRPC_MAX_HEADER_LIST_BYTES);
        const block = callBlock([literal("x-big", big, 0x40), ...refs]);
        assert.ok(block.length < 4300);
        // The bomb, then more streams behind it in the same write: none of them reaches the kernel.
        bomb.raw.write(
          Buffer.concat([headerFrames(1, block), headerFrames(3, callBlock(refs)), headerFrames(5, callBlock(refs))]),
        );
        await until(() => bomb.closed(), 30_000, "the kernel to close the connection");
        assert.ok(
          bomb.got.some(([type, , code]) => type === GOAWAY && code === ENHANCE_YOUR_CALM),
          `GOAWAY ENHANCE_YOUR_CALM, got ${JSON.stringify(bomb.got)}`,
        );
        assert.ok(!bomb.got.some(([type, stream]) => type === HEADERS && stream > 0), "no stream was answered");
        assert.deepEqual(await refusedStreams(t), { headers: 1 });
        assert.equal(t.k.handshakingCount, 0, "no handshake was begun");
        // Many small fields: refused by Node's field bound (RST_STREAM ENHANCE_YOUR_CALM), the connection kept.
        const many = await rawH2(address, true);
        const fields = Array.from({ length: GRPC_MAX_HEADER_FIELDS }, (_, i) => literal(`x-f${i}`, "v"));
        many.raw.write(headerFrames(1, callBlock(fields)));
        await until(() => many.got.some(([type]) => type === RST_STREAM), 30_000, "the stream refused");
        assert.deepEqual(
          many.got.find(([type]) => type === RST_STREAM),
          [RST_STREAM, 1, ENHANCE_YOUR_CALM],
        );
        assert.equal(t.k.handshakingCount, 0, "no handshake was begun");
        many.raw.destroy();
        // The session opened before is served, and a new one opens.
        assert.equal((await c.system.health()).status, "ok");
        const again = await KernelClient.connect({
          grpc: { address, insecure: true, maxMessageBytes: 1024 * 1024 - 1 },
          identity: adminIdentity(t.k),
          tokens: [t.adminToken],
          reconnect: false,
        });
        assert.equal((await again.system.health()).status, "ok");
        await again.close();
      } finally {
        await c.close();
      }
    });
  });

  it("an HPACK bomb in a stream's trailers (SETTINGS never acknowledged) closes its connection as one in its headers does; others served", async () => {
    await withKernel({ grpcListen: "127.0.0.1:0", handshakeTimeoutMs: 60_000 }, async (t) => {
      const address = t.k.grpcAddress as string;
      const c = await grpcAdmin(t, address);
      try {
        const bomb = await rawH2(address, false);
        await until(() => bomb.settings.size > 0, 30_000, "the kernel's SETTINGS");
        // Headers within the bound (END_HEADERS, the stream open), then trailers (END_STREAM | END_HEADERS):
        // a 4 KiB table entry and 19 one-byte references to it, ~80 KiB decoded.
        const refs = Array.from({ length: 19 }, () => hpackInt(62, 7, 0x80));
        const trailers = Buffer.concat([literal("x-big", "a".repeat(4000), 0x40), ...refs]);
        bomb.raw.write(Buffer.concat([headerFrames(1, callBlock()), frame(HEADERS, 0x5, 1, trailers)]));
        await until(() => bomb.closed(), 30_000, "the kernel to close the connection");
        assert.ok(
          bomb.got.some(([type, , code]) => type === GOAWAY && code === ENHANCE_YOUR_CALM),
          `GOAWAY ENHANCE_YOUR_CALM, got ${JSON.stringify(bomb.got)}`,
        );
        assert.deepEqual(await refusedStreams(t), { headers: 1 });
        assert.equal((await c.system.health()).status, "ok");
      } finally {
        await c.close();
      }
    });
  });

  it("a header list over the bound is charged to the peer's stream rate: with a rate of 1 a second, the bomber's next connection is closed as it arrives", async () => {
    await withKernel({ grpcListen: "127.0.0.1:0", grpcStreamPeerRate: 1, handshakeTimeoutMs: 60_000 }, async (t) => {
      const address = t.k.grpcAddress as string;
      const bomb = await rawH2(address, false);
      await until(() => bomb.settings.size > 0, 30_000, "the kernel's SETTINGS");
      const refs = Array.from({ length: 19 }, () => hpackInt(62, 7, 0x80));
      bomb.raw.write(headerFrames(1, callBlock([literal("x-big", "a".repeat(4000), 0x40), ...refs])));
      await until(() => bomb.closed(), 30_000, "the kernel to close the connection");
      // The burst (5) is spent and more: the next connection gets no SETTINGS, only a close.
      const next = await rawH2(address, true);
      await until(() => next.closed() || next.settings.size > 0, 30_000, "SETTINGS or a close");
      assert.equal(next.closed(), true, "closed as it arrives");
      assert.ok(((await refusedConnections(t)).rate ?? 0) >= 1);
      next.raw.destroy();
    });
  });

  it("HEADERS then RST_STREAM in a loop (CVE-2023-44487): past grpcStreamPeerRate streams are refused before the kernel sees them, a connection with too many refused and no session is closed, and a peer over the rate has new connections closed as they arrive; a session opened before keeps working", async () => {
    await withKernel({ grpcListen: "127.0.0.1:0", grpcStreamPeerRate: 1, handshakeTimeoutMs: 60_000 }, async (t) => {
      const address = t.k.grpcAddress as string;
      // One stream of the burst of 5 (a second of the rate, 5×): a session opened before the flood.
      const c = await grpcAdmin(t, address);
      try {
        const flood = await rawH2(address, true);
        await until(() => flood.settings.size > 0, 30_000, "the kernel's SETTINGS");
        const burst: Buffer[] = [];
        for (let i = 0; i < 200; i++) burst.push(headerFrames(2 * i + 1, callBlock()), rst(2 * i + 1));
        flood.raw.write(Buffer.concat(burst));
        await until(() => flood.closed(), 30_000, "the kernel to close the flooding connection");
        assert.ok(
          flood.got.some(([type, , code]) => type === GOAWAY && code === ENHANCE_YOUR_CALM),
          `GOAWAY ENHANCE_YOUR_CALM, got ${JSON.stringify(flood.got.slice(-5))}`,
        );
        // Refused until the connection went: the bound per connection, and one more that closed it.
        assert.equal((await refusedStreams(t)).rate, GRPC_REFUSED_STREAMS_PER_CONNECTION + 1);
        // A peer over the rate: its new connections are closed before HTTP/2 (no SETTINGS), whatever it sends.
        await until(
          async () => {
            const next = await rawH2(address, true);
            await until(() => next.closed() || next.settings.size > 0, 30_000, "SETTINGS or a close");
            if (next.closed()) return true;
            // Tokens came back meanwhile (at most the burst, 5): spend them and try again.
            const spend: Buffer[] = [];
            for (let i = 0; i < 10; i++) spend.push(headerFrames(2 * i + 1, callBlock()), rst(2 * i + 1));
            next.raw.write(Buffer.concat(spend));
            await until(() => next.closed() || next.got.some(([type]) => type === HEADERS), 30_000, "a refusal");
            next.raw.destroy();
            return false;
          },
          30_000,
          "a connection closed as it arrives",
        );
        assert.ok(((await refusedConnections(t)).rate ?? 0) >= 1);
        // The session opened before keeps working: the rate is about new streams.
        assert.equal((await c.system.health()).status, "ok");
        // And once the peer's bucket refills, a new session opens.
        await until(
          async () => {
            try {
              const n = await KernelClient.connect({
                grpc: { address, insecure: true, maxMessageBytes: 1024 * 1024 - 1, connectTimeoutMs: 1000 },
                identity: adminIdentity(t.k),
                tokens: [t.adminToken],
                reconnect: false,
                connectTimeoutMs: 1000,
              });
              await n.close();
              return true;
            } catch {
              return false;
            }
          },
          60_000,
          "a new gRPC session once the rate allows",
        );
      } finally {
        await c.close();
      }
    });
  });

  it("streams HTTP/2 refuses on its own (more than 32 header fields) in a loop: the kernel finds them, closes the connection and charges them to the peer's stream rate; a session opened before keeps working", async () => {
    await abuseChargedToRate(async (t, flood) => {
      // Indexed fields cost a byte each: ~60 bytes a stream that Node refuses before JavaScript sees it.
      // (Static entry 16, accept-encoding: a regular field; a repeated pseudo-header would be malformed instead.)
      const fields = Array.from({ length: GRPC_MAX_HEADER_FIELDS }, () => hpackInt(16, 7, 0x80));
      const n = 4 * GRPC_REFUSED_STREAMS_PER_CONNECTION;
      const streams: Buffer[] = [];
      for (let i = 0; i < n; i++) streams.push(headerFrames(2 * i + 1, callBlock(fields)));
      flood.raw.write(Buffer.concat(streams));
      await until(() => flood.got.filter(([type]) => type === RST_STREAM).length === n, 30_000, "every stream refused by Node");
      assert.ok(flood.got.every(([type, , code]) => type !== RST_STREAM || code === ENHANCE_YOUR_CALM));
      // The kernel finds them and ends the connection.
      await until(() => flood.closed(), 30_000, "the kernel to close the connection");
      assert.ok(flood.got.some(([type, , code]) => type === GOAWAY && code === ENHANCE_YOUR_CALM));
      assert.deepEqual(await refusedStreams(t), { malformed: n });
      assert.equal(t.k.handshakingCount, 0, "no handshake was begun");
    });
  });

  it("WINDOW_UPDATE and PRIORITY frames in a loop, which HTTP/2 handles without telling JavaScript: the connection is closed (GOAWAY ENHANCE_YOUR_CALM) once it spent its overhead budget, counted and charged to the peer's stream rate (its next connection closed as it arrives); a session opened before keeps working", async () => {
    await abuseChargedToRate(async (t, f) => {
      const sent = flood(f, controlFrames);
      // Before the bounds the kernel read such a connection for ever (~200 MB/s on loopback, 0.8 core).
      await until(() => f.closed(), 30_000, "the kernel to close the flooding connection");
      assert.ok(
        f.got.some(([type, , code]) => type === GOAWAY && code === ENHANCE_YOUR_CALM),
        `GOAWAY ENHANCE_YOUR_CALM, got ${JSON.stringify(f.got.slice(-5))}`,
      );
      assert.ok(sent() >= GRPC_OVERHEAD_BURST_BYTES, `closed after ${sent()} bytes: not before its budget was spent`);
      assert.deepEqual(await closedConnections(t), { overhead: 1 });
      assert.deepEqual(await refusedStreams(t), {}, "no stream was involved");
    });
  });

  it("PING frames in a loop over TLS, each batch under nghttp2's bound on unsent acknowledgements: the connection is closed for its overhead; a client on the same kernel writing and reading 16 MiB objects and making thousands of small calls is never closed", async () => {
    await withKernel(
      {
        grpcListen: "127.0.0.1:0",
        grpcTlsCert: tlsFile("server.pem"),
        grpcTlsKey: tlsFile("server.key"),
        handshakeTimeoutMs: 60_000,
      },
      async (t) => {
        const address = t.k.grpcAddress as string;
        const c = await KernelClient.connect({
          grpc: { address, ca: readFileSync(tlsFile("ca.pem")) },
          identity: adminIdentity(t.k),
          tokens: [t.adminToken],
          reconnect: false,
        });
        try {
          // nghttp2 ends a connection with 1,000 acknowledgements unsent (an unread flood of PING or
          // SETTINGS); one that reads them and sends 500 at a time is answered for ever.
          const f = await rawH2(address, true, true);
          await until(() => f.settings.size > 0, 30_000, "the kernel's SETTINGS");
          const pings = Buffer.concat(Array.from({ length: 500 }, (_, i) => frame(PING, 0, 0, Buffer.alloc(8, i))));
          let acked = 0;
          f.raw.on("data", () => {
            if (f.pingAcks() - acked < 500 || f.closed()) return;
            acked = f.pingAcks();
            f.raw.write(pings);
          });
          f.raw.write(pings);
          // Meanwhile a client works: 16 MiB objects written and read back (HTTP/2 window updates as it reads).
          const big = Buffer.alloc(16 * 1024 * 1024 - 128 * 1024, 7);
          for (let i = 0; i < 2; i++) {
            await c.storage.write(`obj://bulk/${i}`, big);
            assert.equal((await c.storage.read(`obj://bulk/${i}`)).data.length, big.length);
          }
          await until(() => f.closed(), 30_000, "the kernel to close the PING flood");
          assert.ok(f.pingAcks() > 1000, `answered ${f.pingAcks()} PINGs before its budget was spent`);
          assert.ok(
            f.got.some(([type, , code]) => type === GOAWAY && code === ENHANCE_YOUR_CALM),
            `GOAWAY ENHANCE_YOUR_CALM, got ${JSON.stringify(f.got.slice(-5))}`,
          );
          // Many small calls, sequential and concurrent, on the same connection.
          for (let i = 0; i < 1000; i++) assert.equal((await c.system.health()).status, "ok");
          await Promise.all(Array.from({ length: 1000 }, (_, i) => c.storage.write(`obj://small/${i % 50}`, Buffer.from("x"))));
          assert.equal((await c.storage.read("obj://bulk/0")).data.length, big.length);
          assert.deepEqual(await closedConnections(t), { overhead: 1 }, "only the flood was closed");
        } finally {
          await c.close();
        }
      },
    );
  });
});

const GRPC_PERSONA = fileURLToPath(new URL("../../test/fixtures/grpc-persona.mjs", import.meta.url));
/** Another local user the test can run a process as: only root can start one. */
const asOtherUser = process.platform === "linux" && process.getuid?.() === 0;

/** A header list over the bound on a new raw connection (closed for it, charged to the peer's rate). */
async function headerBomb(address: string): Promise<void> {
  const bomb = await rawH2(address, false);
  await until(() => bomb.settings.size > 0 || bomb.closed(), 30_000, "the kernel's SETTINGS or a close");
  if (bomb.closed()) return;
  const refs = Array.from({ length: 19 }, () => hpackInt(62, 7, 0x80));
  bomb.raw.write(headerFrames(1, callBlock([literal("x-big", "a".repeat(4000), 0x40), ...refs])));
  await until(() => bomb.closed(), 30_000, "the kernel to close the connection");
}

/** The `detail` of each gRPC session.open record of `persona`. */
function grpcOpens(t: TestKernel, persona: string): Record<string, unknown>[] {
  return allAudit(t.k)
    .filter((r) => r.op === "session.open" && r.persona === persona)
    .map((r) => JSON.parse(r.detail ?? "{}") as Record<string, unknown>)
    .filter((d) => d.transport === "grpc");
}

describe("loopback gRPC peers are told apart by their local user", () => {
  it("one local user's penalties drain only its own stream rate: while its new connections are closed as they arrive, another local user's (uid 65534) new gRPC session opens, and its session.open names that uid", {
    skip: !asOtherUser && "needs root, to run a process as another local user",
  }, async () => {
    await withKernel({ grpcListen: "127.0.0.1:0", grpcStreamPeerRate: 1, handshakeTimeoutMs: 60_000 }, async (t) => {
      const address = t.k.grpcAddress as string;
      const p = await t.persona("neighbour", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const child = spawn(process.execPath, [GRPC_PERSONA], {
        cwd: REPO_ROOT,
        uid: 65534,
        gid: 65534,
        env: {
          ...process.env,
          KPIP_TEST_GRPC: address,
          KPIP_TEST_IDENTITY: serializeIdentity(p.identity),
          KPIP_TEST_TOKEN: Buffer.from(p.token).toString("base64url"),
        },
        stdio: ["pipe", "pipe", "inherit"],
      });
      try {
        let out = "";
        child.stdout?.on("data", (d: Buffer) => {
          out += d.toString();
        });
        await until(() => out.startsWith("ready\n"), 60_000, "the other user's process to load");
        // This process (root) bombs until its own new connections are closed as they arrive.
        await headerBomb(address);
        await assertNextConnectionRefused(t, address);
        // Then the other user connects while the bomber keeps its own rate spent (a bomb each time
        // a connection of its gets in): before, every loopback address was one peer key, and the
        // other user's connections were closed as they arrived like the bomber's until it gave up.
        const exited = once(child, "exit");
        let done = false;
        void exited.then(() => {
          done = true;
        });
        child.stdin?.write("go\n");
        let bombs = 0;
        while (!done) {
          await headerBomb(address);
          bombs++;
          await Promise.race([exited, sleep(50)]);
        }
        const [code] = (await exited) as [number];
        assert.equal(code, 0);
        assert.ok(bombs >= 1);
        const result = JSON.parse(out.slice("ready\n".length)) as { uid: number; status?: string; error?: string };
        assert.deepEqual(result, { uid: 65534, status: "ok" });
        const opened = grpcOpens(t, "neighbour");
        assert.equal(opened.length, 1);
        assert.deepEqual(opened[0]?.localUser, { uid: 65534 }, "the record names the user owning the peer's socket");
      } finally {
        child.kill();
      }
    });
  });

  it("a loopback gRPC session.open names the local user owning the peer's socket; without the addon it says the user is unknown, and every local user shares one key as before", {
    skip: process.platform !== "linux" && "sock_diag is Linux's",
  }, async () => {
    for (const off of [false, true]) {
      const saved = process.env.KPIP_PEERCRED;
      if (off) process.env.KPIP_PEERCRED = "off";
      try {
        await withKernel({ grpcListen: "127.0.0.1:0", handshakeTimeoutMs: 60_000 }, async (t) => {
          const c = await grpcAdmin(t, t.k.grpcAddress as string);
          try {
            assert.equal((await c.system.health()).status, "ok");
          } finally {
            await c.close();
          }
          const opened = grpcOpens(t, c.persona);
          assert.equal(opened.length, 1);
          if (off) {
            assert.equal(opened[0]?.localUser, null);
            assert.equal(opened[0]?.localUserUnknown, "addon not loaded");
          } else {
            assert.deepEqual(opened[0]?.localUser, { uid: process.getuid?.() }, JSON.stringify(opened[0]));
          }
        });
      } finally {
        if (saved === undefined) delete process.env.KPIP_PEERCRED;
        else process.env.KPIP_PEERCRED = saved;
      }
    }
  });

  it("a connection that skips stream ids (RFC 9113 allows it) is counted no more refused streams than the bytes it sent could carry", async () => {
    await withKernel({ grpcListen: "127.0.0.1:0", handshakeTimeoutMs: 60_000 }, async (t) => {
      const raw = await rawH2(t.k.grpcAddress as string, true);
      await until(() => raw.settings.size > 0, 30_000, "the kernel's SETTINGS");
      // Two streams: 1, then the last id a client may use. Before, the ids between read as a
      // billion streams HTTP/2 refused: counted, logged and charged to the peer.
      raw.raw.write(Buffer.concat([headerFrames(1, callBlock()), headerFrames(0x7fffffff, callBlock())]));
      await until(() => raw.closed(), 30_000, "the connection to close");
      const sent = raw.raw.bytesWritten;
      const refused = (await refusedStreams(t)).malformed ?? 0;
      assert.ok(refused <= Math.floor(sent / 9), `${refused} refused streams counted for ${sent} bytes sent`);
    });
  });
});
