import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import { KernelClient, loadIdentity } from "@kpip/client";
import { pino } from "pino";
import { ConfigError, Kernel, resolveConfig } from "../src/index.js";
import {
  checkDescriptorBudget,
  DESCRIPTOR_MARGIN,
  DESCRIPTORS_PER_AGENT,
  DESCRIPTORS_PER_COMMAND,
  descriptorNeed,
} from "../src/kernel/fd-budget.js";
import { peerKey } from "../src/session/peer-key.js";
import { SHM_LINGER_MAX } from "../src/session/shm-budget.js";
import { ConnectionCaps } from "../src/transport/connection-caps.js";
import type { TestKernel } from "./harness.js";
import { adminIdentity, connectAdminOf, removeHome, until, withKernel } from "./harness.js";
import { H2_PREFACE, h2Frame, onH2Frames } from "./wire.js";

const fixture = (f: string) => fileURLToPath(new URL(`../../test/fixtures/tls/${f}`, import.meta.url));
const TLS = { grpcTlsCert: fixture("server.pem"), grpcTlsKey: fixture("server.key") };
const ca = readFileSync(fixture("ca.pem"));

/**
 * A gRPC kernel's options where only a bound closes connections (a handshake may idle a minute),
 * its log lines, and those of the connections a bound shed.
 */
function boundOnly(bounds: { grpcMaxConnectionsPerPeer: number; grpcMaxConnections: number }) {
  const lines: { msg: string; address?: string; bound?: string; peer?: string; shed?: string }[] = [];
  const logger = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return {
    opts: { grpcListen: "127.0.0.1:0", ...bounds, handshakeTimeoutMs: 60_000, logger },
    lines,
    shedLines: (bound: "grpcMaxConnectionsPerPeer" | "grpcMaxConnections") =>
      lines.filter((l) => String(l.msg).startsWith(`gRPC connection shed: ${bound} reached`)),
  };
}

const portOf = (address: string) => Number(address.slice(address.lastIndexOf(":") + 1));

/** The refusals counted in kpip_grpc_connections_refused_total, by bound. */
async function refusals(t: TestKernel): Promise<Record<string, number>> {
  const m = await t.k.metrics?.grpcConnectionsRefused.get();
  return Object.fromEntries((m?.values ?? []).map((v) => [v.labels.bound as string, v.value]));
}

/** Connections without an attested session shed at grpcMaxConnections (kpip_grpc_connections_shed_total). */
async function sheds(t: TestKernel): Promise<number> {
  const m = await t.k.metrics?.grpcConnectionsShed.get();
  return m?.values[0]?.value ?? 0;
}

/**
 * A plaintext HTTP/2 connection from `from` (an address of 127/8: each is another peer to the
 * kernel): "admitted" once the kernel's SETTINGS arrive, "refused" if it closes before them.
 */
async function h2From(address: string, from: string): Promise<{ state: "admitted" | "refused"; h: http2.ClientHttp2Session }> {
  const h = http2.connect(`http://${address}`, {
    createConnection: () => net.connect({ host: "127.0.0.1", port: portOf(address), localAddress: from }),
  });
  h.on("error", () => {});
  const state = await new Promise<"admitted" | "refused">((resolve) => {
    h.once("remoteSettings", () => resolve("admitted"));
    h.once("close", () => resolve("refused"));
  });
  return { state, h };
}

/** A TLS connection from `from`: "admitted" once the handshake is done, "refused" if it closes first. */
async function tlsFrom(address: string, from: string): Promise<{ state: "admitted" | "refused"; s: tls.TLSSocket }> {
  const s = tls.connect({
    socket: net.connect({ host: "127.0.0.1", port: portOf(address), localAddress: from }),
    ca,
    ALPNProtocols: ["h2"],
    checkServerIdentity: () => undefined,
  });
  s.on("error", () => {});
  const state = await new Promise<"admitted" | "refused">((resolve) => {
    s.once("secureConnect", () => resolve("admitted"));
    s.once("close", () => resolve("refused"));
  });
  return { state, s };
}

/** A gRPC message's most (PROTOCOL §3.6): clients given sizes at or below it, each another, get a connection each. */
const MIB = 1024 * 1024;

/**
 * Connections to `t`'s gRPC listener from loopback: admin clients (`client`, each of another
 * message size — grpc-js shares one connection among channels with the same options) and idle
 * HTTP/2 connections from 127.0.0.2 that never attest (`raw`: a sandboxed command with the
 * network, any local user; all of loopback is one peer key). `close` ends them all.
 */
function loopbackConnections(t: TestKernel) {
  const address = t.k.grpcAddress as string;
  const held: http2.ClientHttp2Session[] = [];
  const clients: KernelClient[] = [];
  return {
    held,
    clients,
    client: async (maxMessageBytes: number) => {
      const c = await KernelClient.connect({
        grpc: { address, insecure: true, maxMessageBytes },
        identity: adminIdentity(t.k),
        tokens: [t.adminToken],
        reconnect: false,
      });
      clients.push(c);
      return c;
    },
    raw: async () => {
      const { state, h } = await h2From(address, "127.0.0.2");
      held.push(h);
      return state;
    },
    close: async () => {
      for (const c of clients) await c.close();
      for (const h of held) h.destroy();
    },
  };
}

describe("gRPC connections bounded in number, per peer address and in all", () => {
  it("loopback addresses are one peer: connections from 127.0.0.2–11 past grpcMaxConnectionsPerPeer shed that key's older ones, never more than the bound open, counted and logged; a closed connection frees its slot", async () => {
    const { opts, shedLines } = boundOnly({ grpcMaxConnectionsPerPeer: 4, grpcMaxConnections: 64 });
    await withKernel(opts, async (t) => {
      const address = t.k.grpcAddress as string;
      const held: http2.ClientHttp2Session[] = [];
      try {
        const states: string[] = [];
        // A local peer can bind any 127.x.y.z: rotating through them gave it a fresh allowance each.
        for (let i = 0; i < 10; i++) {
          const { state, h } = await h2From(address, `127.0.0.${2 + i}`);
          states.push(state);
          held.push(h);
        }
        // Each past the bound sheds the key's oldest (none carries a session): four open, whatever the address.
        assert.deepEqual(states, Array(10).fill("admitted"));
        await until(() => held.slice(0, 6).every((h) => h.closed), 30_000, "the six oldest to be shed");
        assert.deepEqual(
          held.map((h) => h.closed),
          [...Array(6).fill(true), ...Array(4).fill(false)],
        );
        assert.equal(t.k.grpcConnectionCount, 4);
        assert.equal(await sheds(t), 6);
        assert.deepEqual(await refusals(t), {});
        const shed = shedLines("grpcMaxConnectionsPerPeer");
        assert.equal(shed.length, 6);
        assert.ok(shed.every((l) => /^127\.0\.0\.\d+$/.test(String(l.address)) && l.bound === "peer"));
        // The flooding peer closes its connections: the kernel sees them go, and a client (loopback too) gets in.
        for (const h of held) h.destroy();
        await until(() => t.k.grpcConnectionCount === 0, 30_000, "the kernel to release the flooding peer's 4 connections");
        const c = await KernelClient.connect({
          grpc: { address, insecure: true },
          identity: adminIdentity(t.k),
          tokens: [t.adminToken],
          reconnect: false,
        });
        try {
          assert.equal((await c.system.health()).status, "ok");
          assert.equal(t.k.grpcConnectionCount, 1);
          const again = await h2From(address, "127.0.0.2");
          held.push(again.h);
          assert.equal(again.state, "admitted");
          assert.equal((await c.system.health()).status, "ok");
        } finally {
          await c.close();
        }
      } finally {
        for (const h of held) h.destroy();
      }
    });
  });

  it("a local peer holding grpcMaxConnectionsPerPeer idle loopback connections locks no other local client out: a new connection sheds that peer key's oldest one without an attested session, never one carrying an attested session", async () => {
    const { opts, shedLines } = boundOnly({ grpcMaxConnectionsPerPeer: 4, grpcMaxConnections: 64 });
    await withKernel(opts, async (t) => {
      const { held, clients, client, raw, close } = loopbackConnections(t);
      try {
        assert.deepEqual([await raw(), await raw(), await raw(), await raw()], Array(4).fill("admitted"));
        // The peer key is full of connections that never attest: a client is let in, the oldest of them goes.
        const first = await client(MIB);
        assert.equal((await first.system.health()).status, "ok");
        await until(() => held[0]?.closed, 30_000, "the oldest idle connection to be shed");
        // The flood goes on: it sheds its own, never the client's.
        assert.deepEqual([await raw(), await raw(), await raw()], Array(3).fill("admitted"));
        await until(() => held.slice(0, 4).every((h) => h.closed), 30_000, "the flood's older connections to be shed");
        assert.equal((await first.system.health()).status, "ok");
        assert.equal(t.k.grpcConnectionCount, 4);
        // Three more clients take the remaining slots; with every slot attested a new connection is refused.
        for (const size of [MIB - 1, MIB - 2, MIB - 3]) await client(size);
        assert.equal(await raw(), "refused");
        for (const c of clients) assert.equal((await c.system.health()).status, "ok");
        assert.equal(t.k.grpcConnectionCount, 4);
        assert.equal(await sheds(t), 7);
        assert.deepEqual(await refusals(t), { peer: 1 });
        const shed = shedLines("grpcMaxConnectionsPerPeer");
        assert.equal(shed.length, 7);
        assert.ok(shed.every((l) => /^127\.0\.0\.\d+$/.test(String(l.address)) && l.shed === "127.0.0.2"));
      } finally {
        await close();
      }
    });
  });

  it("at grpcMaxConnections a new connection sheds the oldest connection without an attested session, counted and logged: a client connects and is served while never-attesting connections fill the total; an attested one is never shed", async () => {
    // Every loopback address is one peer key: the per-peer bound is set above the total.
    const { opts, shedLines } = boundOnly({ grpcMaxConnectionsPerPeer: 64, grpcMaxConnections: 4 });
    await withKernel(opts, async (t) => {
      const { held, client, raw, close } = loopbackConnections(t);
      try {
        // The oldest connection carries an attested session; HTTP/2 connections that never open a stream fill the rest.
        const first = await client(MIB);
        assert.deepEqual([await raw(), await raw(), await raw()], ["admitted", "admitted", "admitted"]);
        assert.equal(t.k.grpcConnectionCount, 4);
        // A new client is let in: the oldest connection without an attested session goes, not the older attested one.
        const second = await client(MIB - 1);
        assert.equal((await second.system.health()).status, "ok");
        await until(() => held[0]?.closed, 30_000, "the oldest idle connection to be shed");
        assert.deepEqual(
          held.map((h) => h.closed),
          [true, false, false],
        );
        assert.equal(t.k.grpcConnectionCount, 4);
        // A connection that will never attest sheds the next idle one, never either client's.
        assert.equal(await raw(), "admitted");
        await until(() => held[1]?.closed, 30_000, "the next oldest idle connection to be shed");
        assert.deepEqual(
          held.map((h) => h.closed),
          [true, true, false, false],
        );
        assert.equal((await first.system.health()).status, "ok");
        assert.equal((await second.system.health()).status, "ok");
        assert.equal(t.k.grpcConnectionCount, 4);
        assert.equal(await sheds(t), 2);
        assert.deepEqual(await refusals(t), {});
        const shed = shedLines("grpcMaxConnections");
        assert.equal(shed.length, 2);
        assert.ok(shed.every((l) => l.peer === "grpc:connections" && l.shed === "127.0.0.2"));
      } finally {
        await close();
      }
    });
  });

  it("at grpcMaxConnections with every connection carrying an attested session, a new connection is closed before TLS, counted and logged; the attested sessions keep working, and one that ends frees its connection", async () => {
    const { opts, lines } = boundOnly({ grpcMaxConnectionsPerPeer: 64, grpcMaxConnections: 2 });
    await withKernel({ ...opts, ...TLS }, async (t) => {
      const address = t.k.grpcAddress as string;
      const held: tls.TLSSocket[] = [];
      const clients: KernelClient[] = [];
      const client = async (maxMessageBytes: number) => {
        const c = await KernelClient.connect({
          grpc: { address, ca, maxMessageBytes },
          identity: adminIdentity(t.k),
          tokens: [t.adminToken],
          reconnect: false,
        });
        clients.push(c);
        return c;
      };
      const open = async (from: string, n: number) => {
        const states: string[] = [];
        for (let i = 0; i < n; i++) {
          const { state, s } = await tlsFrom(address, from);
          states.push(state);
          held.push(s);
        }
        return states;
      };
      try {
        const [a, b] = [await client(MIB), await client(MIB - 1)];
        assert.equal(t.k.grpcConnectionCount, 2);
        // Any address: the listener is full of attested sessions.
        assert.deepEqual(await open("127.0.0.3", 2), ["refused", "refused"]);
        assert.deepEqual(await open("127.0.0.4", 1), ["refused"]);
        assert.deepEqual(await refusals(t), { total: 3 });
        assert.equal(await sheds(t), 0);
        // Refused before TLS began: no TLS refusal is logged for them; the total's lines share one key.
        assert.deepEqual(
          lines.filter((l) => l.msg === "TLS handshake refused"),
          [],
        );
        const totalLines = lines.filter((l) => l.msg === "gRPC connection refused: grpcMaxConnections reached");
        assert.equal(totalLines.length, 3);
        assert.ok(totalLines.every((l) => l.peer === "grpc:connections"));
        assert.equal((await a.system.health()).status, "ok");
        assert.equal((await b.system.health()).status, "ok");
        // One client leaves: its connection closes and a new one gets in; without a session, the next newcomer sheds it.
        await a.close();
        await until(() => t.k.grpcConnectionCount === 1, 30_000, "the kernel to release the closed connection");
        assert.deepEqual(await open("127.0.0.3", 2), ["admitted", "admitted"]);
        await until(() => held[3]?.closed, 30_000, "the idle TLS connection to be shed");
        assert.equal(await sheds(t), 1);
        assert.equal((await b.system.health()).status, "ok");
      } finally {
        for (const c of clients) await c.close();
        for (const s of held) s.destroy();
      }
    });
  });
});

const frame = h2Frame;

/** A gRPC call's request headers in HPACK, literals never indexed (the same bytes for every stream). */
function callHeaders(authority: string): Buffer {
  const str = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s)]);
  return Buffer.concat([
    Buffer.from([0x83, 0x86]), // :method POST, :scheme http (static table)
    Buffer.from([0x04]), // :path, name from the static table
    str("/kpip.v1.Kernel/Session"),
    Buffer.from([0x01]), // :authority
    str(authority),
    Buffer.from([0x0f, 0x10]), // content-type (static index 31)
    str("application/grpc"),
    Buffer.from([0x00]),
    str("te"),
    str("trailers"),
  ]);
}

const RST_STREAM = 3;
const GOAWAY = 7;

/** A raw HTTP/2 connection to the kernel: what it writes, and the frames it received ([type, stream, error code]). */
async function rawH2(address: string) {
  const raw = net.connect({ host: "127.0.0.1", port: portOf(address) });
  raw.on("error", () => {});
  await new Promise((r) => raw.once("connect", r));
  const got: [number, number, number][] = [];
  onH2Frames(raw, (type, _flags, stream, _payload, code) => got.push([type, stream, code]));
  // The preface and our (empty) SETTINGS.
  raw.write(Buffer.concat([H2_PREFACE, frame(4, 0, 0, Buffer.alloc(0))]));
  return { raw, got };
}

describe("gRPC streams bounded per HTTP/2 connection", () => {
  it("a connection opening more streams than maxSessions + preauthPerTransport has the next one refused (REFUSED_STREAM; once it acknowledged the bound, GOAWAY); the kernel serves others", async () => {
    await withKernel(
      { grpcListen: "127.0.0.1:0", maxSessions: 3, adminReserve: 1, preauthPerTransport: 4, handshakeTimeoutMs: 60_000 },
      async (t) => {
        const address = t.k.grpcAddress as string;
        const cap = 3 + 4;
        // cap + 1 streams at once, each its headers and nothing more (no HELLO).
        const streams = Array.from({ length: cap + 1 }, (_, i) => frame(1, 0x4, 2 * i + 1, callHeaders(address)));
        const refusals = (got: [number, number, number][]) => got.filter(([type]) => type === RST_STREAM || type === GOAWAY);
        // Before the peer acknowledged the kernel's SETTINGS: the stream past the bound alone is refused.
        const early = await rawH2(address);
        early.raw.write(Buffer.concat(streams));
        await until(() => refusals(early.got).length > 0, 30_000, "a stream refused");
        // The first refusal is the stream past the bound, with REFUSED_STREAM (0x7); none before it.
        assert.deepEqual(refusals(early.got)[0], [RST_STREAM, 2 * cap + 1, 0x7]);
        early.raw.destroy();
        // After it acknowledged them, going past the bound is the peer's protocol error: its connection ends (GOAWAY).
        const late = await rawH2(address);
        await until(() => late.got.some(([type]) => type === 4), 30_000, "the kernel's SETTINGS");
        late.raw.write(Buffer.concat([frame(4, 0x1, 0, Buffer.alloc(0)), ...streams]));
        await until(() => late.got.some(([type]) => type === GOAWAY), 30_000, "GOAWAY");
        late.raw.destroy();
        // Neither took the kernel down, nor its other clients.
        const c = await t.admin();
        assert.equal((await c.system.health()).status, "ok");
      },
    );
  });
});

describe("ConnectionCaps", () => {
  it("counts by peer key (an IPv6 /64 as one peer, a mapped IPv4 address as the IPv4 one), sheds past its peer's bound, refuses when all of it is attested, and frees on release", () => {
    const caps = new ConnectionCaps<{ a: string }>({ perPeer: 2, total: 6 });
    const conns: { a: string }[] = [];
    const admit = (a: string) => {
      const c = { a };
      conns.push(c);
      return caps.admit(peerKey(a), c);
    };
    const at = (i: number) => conns[i] as { a: string };
    assert.deepEqual(admit("2001:db8:1:2::1"), {});
    assert.deepEqual(admit("2001:db8:1:2:ffff::9"), {});
    // Another address of the same /64: the key is at its bound, its oldest without a session goes.
    assert.deepEqual(admit("2001:db8:1:2::7"), { shed: at(0), bound: "peer" }, "another address of the same /64");
    assert.equal(caps.of("2001:db8:1:2::/64"), 2);
    // Both of the key's connections carry sessions: the next is refused, nothing shed.
    caps.attested(at(1));
    caps.attested(at(2));
    assert.deepEqual(admit("2001:db8:1:2::8"), { refused: "peer" });
    assert.deepEqual(admit("10.0.0.1"), {});
    assert.deepEqual(admit("::ffff:10.0.0.1"), {});
    caps.attested(at(4));
    caps.attested(at(5));
    assert.deepEqual(admit("10.0.0.1"), { refused: "peer" }, "the mapped address counted as the IPv4 one");
    // A peer the transport could not name counts only in the total.
    const unnamed = { a: "" };
    assert.deepEqual(caps.admit("", unnamed), {});
    assert.equal(caps.count, 5);
    caps.release(at(1));
    caps.release(at(1)); // twice: counted once
    assert.equal(caps.count, 4);
    assert.equal(caps.of("2001:db8:1:2::/64"), 1);
    assert.deepEqual(admit("2001:db8:1:2::abcd"), {});
    caps.release(unnamed);
    caps.release(at(4));
    assert.equal(caps.count, 3);
    assert.equal(caps.of("10.0.0.1"), 1);
  });

  it("at the total sheds the oldest connection without an attested session, never one with; refuses only when every one has one; a peer at its own bound sheds only its own", () => {
    const caps = new ConnectionCaps<string>({ perPeer: 3, total: 4 });
    assert.deepEqual(caps.admit("a", "a1"), {});
    assert.deepEqual(caps.admit("b", "b1"), {});
    assert.deepEqual(caps.admit("b", "b2"), {});
    assert.deepEqual(caps.admit("c", "c1"), {});
    caps.attested("a1");
    caps.attested("a1"); // two sessions on one connection
    // The oldest is attested: the oldest without a session goes.
    assert.deepEqual(caps.admit("d", "d1"), { shed: "b1", bound: "total" });
    assert.equal(caps.of("b"), 1);
    assert.equal(caps.count, 4);
    caps.release("b1"); // its close comes after the shed: not counted twice
    assert.equal(caps.count, 4);
    assert.deepEqual(caps.admit("d", "d2"), { shed: "b2", bound: "total" });
    assert.deepEqual(caps.admit("d", "d3"), { shed: "c1", bound: "total" });
    // A peer at its own bound sheds its own oldest without a session, never another peer's (c1 was older).
    assert.deepEqual(caps.admit("d", "d4"), { shed: "d1", bound: "peer" });
    assert.equal(caps.count, 4);
    for (const c of ["d2", "d3", "d4"]) caps.attested(c);
    // Every one of its connections carries a session: refused, nothing shed.
    assert.deepEqual(caps.admit("d", "d5"), { refused: "peer" });
    assert.deepEqual(caps.admit("e", "e1"), { refused: "total" });
    // One of a1's two sessions ends: still attested. The other ends: it may be shed again.
    caps.sessionEnded("a1");
    assert.deepEqual(caps.admit("e", "e1"), { refused: "total" });
    caps.sessionEnded("a1");
    assert.deepEqual(caps.admit("e", "e1"), { shed: "a1", bound: "total" });
    // An attestation or an end after the connection went changes nothing.
    caps.attested("a1");
    caps.sessionEnded("a1");
    caps.sessionEnded("d2");
    assert.deepEqual(caps.admit("f", "f1"), { shed: "e1", bound: "total" });
    assert.deepEqual(caps.admit("f", "f2"), { shed: "d2", bound: "total" });
    assert.equal(caps.count, 4);
  });
});

describe("gRPC bounds against the open-file limit", () => {
  const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));
  /** `kpip kernel` with a soft and hard RLIMIT_NOFILE of 1024 (node raises its soft limit to the hard one). */
  const under1024 = (home: string, args: string[]) => [
    "-c",
    `ulimit -n 1024 && exec "$0" "$@"`,
    process.execPath,
    MAIN,
    "kernel",
    "--home",
    home,
    "--grpc-listen",
    "127.0.0.1:0",
    ...args,
  ];

  it("a kernel whose gRPC bounds do not fit RLIMIT_NOFILE refuses to start, naming the numbers; one whose bounds fit starts", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-nofile-"));
    try {
      // The defaults: 1024 gRPC connections + 128 handshakes + 1024 sessions + processes > 1024 descriptors.
      const r = spawnSync("sh", under1024(home, ["--log-level", "silent"]), { encoding: "utf8", timeout: 60_000 });
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /RLIMIT_NOFILE 1024/);
      assert.match(r.stderr, /grpcMaxConnections 1024/);
      assert.match(r.stderr, /ulimit -n \d+/);
      // 64 + 32 + 100 + 4 × 64 agents + 2 × 0 commands + (2 × 100 + 32 + 64) segments + 128 = 876: it starts and listens.
      const k = spawn(
        "sh",
        under1024(home, [
          "--grpc-max-connections",
          "64",
          "--preauth-per-transport",
          "32",
          "--max-sessions",
          "100",
          "--max-processes",
          "64",
          "--log-level",
          "info",
        ]),
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      let out = "";
      k.stdout.on("data", (d: Buffer) => {
        out += d.toString();
      });
      k.stderr.on("data", (d: Buffer) => {
        out += d.toString();
      });
      try {
        await until(() => /"grpc":"127\.0\.0\.1:\d+"/.test(out) || k.exitCode !== null, 30_000, "the kernel to listen");
        assert.equal(k.exitCode, null, out);
      } finally {
        k.kill("SIGTERM");
        await new Promise((r) => (k.exitCode !== null ? r(undefined) : k.once("exit", r)));
      }
    } finally {
      removeHome(home);
    }
  });

  const config = (flags: Record<string, unknown>) =>
    resolveConfig({ flags: { home: join(tmpdir(), "kpip-no-home"), grpcListen: "127.0.0.1:0", ...flags } });

  it("counts the shared-memory segments a Unix-socket session holds: under RLIMIT_NOFILE at the need, 96 sessions carrying bodies both ways leave a gRPC client and a new session served", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-nofile-"));
    const bounds = { grpcMaxConnections: 4, preauthPerTransport: 8, maxSessions: 100, maxProcesses: 1, maxAgents: 1 };
    // What the start check asks of this configuration, and not one descriptor more.
    const limit = descriptorNeed(config(bounds)).total;
    const flags = Object.entries(bounds).flatMap(([k, v]) => [
      `--${k.replace(/[A-Z]/g, (m) => `-${m.toLowerCase()}`)}`,
      String(v),
    ]);
    const k = spawn(
      "sh",
      [
        "-c",
        `ulimit -n ${limit} && exec "$0" "$@"`,
        process.execPath,
        MAIN,
        "kernel",
        "--home",
        home,
        "--grpc-listen",
        "127.0.0.1:0",
        ...flags,
        "--log-level",
        "info",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    k.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    k.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    const clients: KernelClient[] = [];
    try {
      await until(() => /"grpc":"127\.0\.0\.1:\d+"/.test(out) || k.exitCode !== null, 30_000, "the kernel to listen");
      assert.equal(k.exitCode, null, out);
      const address = (/"grpc":"(127\.0\.0\.1:\d+)"/.exec(out) as RegExpExecArray)[1] as string;
      const body = Buffer.alloc(100_000, 7);
      /** A new Unix-socket session that sends a body through its segment and gets one back through the kernel's. */
      const bothWays = async (i: number) => {
        const c = await connectAdminOf(home);
        clients.push(c);
        await c.storage.write(`obj://fd/${i}`, body);
        assert.ok(Buffer.from((await c.storage.read(`obj://fd/${i}`)).data).equals(body));
        assert.deepEqual(c.shmFrames, { sent: 1, received: 1 }, `session ${i}: both bodies went through the segments`);
      };
      // Each holds its socket and two segments in the kernel: three descriptors, not one.
      for (let i = 0; i < 96; i++) await bothWays(i);
      const g = await KernelClient.connect({
        grpc: { address, insecure: true },
        identity: loadIdentity(join(home, "admin.identity")),
        tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
        reconnect: false,
      });
      clients.push(g);
      await g.storage.write("obj://fd/grpc", Buffer.alloc(300_000, 1));
      assert.equal((await g.storage.stat("obj://fd/grpc")).size, 300_000);
      await bothWays(96);
      assert.doesNotMatch(out, /EMFILE/);
    } finally {
      for (const c of clients) await c.close().catch(() => {});
      k.kill("SIGTERM");
      await new Promise((r) => (k.exitCode !== null ? r(undefined) : k.once("exit", r)));
      removeHome(home);
    }
  });

  it("counts each descriptor once: gRPC connections (a gRPC handshake is a stream on one), Unix-socket handshakes, sessions, and each process that can run at once by its kind", () => {
    const c = config({ grpcMaxConnections: 100, preauthPerTransport: 10, maxSessions: 20, maxAgents: 3, maxProcesses: 8 });
    const n = descriptorNeed(c);
    const segments = 2 * 20 + 10 + SHM_LINGER_MAX;
    assert.deepEqual(n, { grpc: 100, handshakes: 10, sessions: 20, agents: 3, commands: 5, segments, total: n.total });
    assert.equal(n.total, 100 + 10 + 20 + DESCRIPTORS_PER_AGENT * 3 + DESCRIPTORS_PER_COMMAND * 5 + segments + DESCRIPTOR_MARGIN);
    // Shared memory off: no segment.
    assert.equal(descriptorNeed(config({ maxSessions: 20, shmThreshold: 0 })).segments, 0);
    // maxAgents above maxProcesses: no more agents than processes, and no commands beside them.
    const few = descriptorNeed(config({ maxAgents: 64, maxProcesses: 16 }));
    assert.deepEqual([few.agents, few.commands], [16, 0]);
    // The defaults: 64 agents and 192 commands (maxProcesses 256), not 64 agents alone.
    const d = descriptorNeed(config({}));
    assert.deepEqual([d.agents, d.commands], [64, 192]);
    assert.equal(d.total, 1024 + 128 + d.sessions + 4 * 64 + 2 * 192 + (2 * 1024 + 128 + SHM_LINGER_MAX) + DESCRIPTOR_MARGIN);
  });

  it("refuses exactly past the limit, naming each part and the gRPC bound that would fit; without gRPC it asks nothing", () => {
    const c = config({ grpcMaxConnections: 100, preauthPerTransport: 10, maxSessions: 20, maxAgents: 3, maxProcesses: 8 });
    const need = descriptorNeed(c).total;
    checkDescriptorBudget(c, need);
    assert.throws(
      () => checkDescriptorBudget(c, need - 1),
      (e: Error) =>
        e instanceof ConfigError &&
        e.message.includes(`RLIMIT_NOFILE ${need - 1}`) &&
        e.message.includes("grpcMaxConnections 100 + preauthPerTransport 10 + maxSessions 20") &&
        e.message.includes("4 × 3 agents") &&
        e.message.includes("2 × 5 commands") &&
        e.message.includes(`${2 * 20 + 10 + SHM_LINGER_MAX} shared-memory segments`) &&
        e.message.includes(`= ${need}`) &&
        e.message.includes("set grpcMaxConnections to 99 or less"),
    );
    assert.throws(() => checkDescriptorBudget(c, 50), /lower grpcMaxConnections, maxSessions and maxProcesses/);
    checkDescriptorBudget(config({ grpcListen: undefined }), 1);
  });

  it("a refused start opens nothing: no home, so no store, lock or socket in it", async () => {
    const parent = mkdtempSync(join(tmpdir(), "kpip-nofile-"));
    const home = join(parent, "home");
    try {
      // More connections than any RLIMIT_NOFILE can be (Linux caps it at nr_open, below 2^31).
      const k = new Kernel({ home, grpcListen: "127.0.0.1:0", grpcMaxConnections: 2 ** 40, logLevel: "silent" });
      await assert.rejects(k.start(), (e: Error) => e instanceof ConfigError && /RLIMIT_NOFILE/.test(e.message));
      assert.equal(existsSync(home), false, "the home was not made");
      await assert.rejects(k.start(), /cannot start from state stopped/);
    } finally {
      removeHome(parent);
    }
  });
});
