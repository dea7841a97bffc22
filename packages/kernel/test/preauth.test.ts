import assert from "node:assert/strict";
import { readdirSync, readlinkSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { KernelClient, RequestTooLargeError } from "@kpip/client";
import { encodeMessage, HEADER_SIZE, type Message, MessageType, writeHeader } from "@kpip/protocol";
import { pino } from "pino";
import type { KernelMetrics } from "../src/metrics/metrics.js";
import { adminIdentity, removeHome, sandboxSkip, startKernel, until, withKernel } from "./harness.js";
import { allAudit, RawPeer } from "./wire.js";

const AGENT = fileURLToPath(new URL("../../test/fixtures/agent.mjs", import.meta.url));

const errorFrame = (fatal: boolean): Message => ({
  type: "ERROR",
  body: { class: "PROTOCOL", code: "PEER_SAYS", message: "x", fatal },
});

/** Open socket descriptors of this process (the kernel runs in it). */
const fds = () =>
  readdirSync("/proc/self/fd").filter((f) => {
    try {
      return readlinkSync(`/proc/self/fd/${f}`).startsWith("socket:");
    } catch {
      return false;
    }
  }).length;

/** A logger that keeps every line, parsed. */
function recordingLogger() {
  const lines: { msg: string; peer?: string; suppressed?: number }[] = [];
  const logger = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { logger, lines };
}

describe("bounded before authentication", () => {
  it("a peer's fatal ERROR closes its connection, before HELLO and after WELCOME: the kernel's descriptor is gone", async () => {
    await withKernel({}, async (t) => {
      const before = fds();
      const peers: RawPeer[] = [];
      for (let i = 0; i < 20; i++) peers.push(await RawPeer.connect(t.k.socketPath));
      for (let i = 0; i < 20; i++) {
        const p = await RawPeer.admin(t);
        // Quiet while the others handshake (seconds on a busy machine): not to be dropped as dead meanwhile.
        p.answerPings();
        peers.push(p);
      }
      assert.equal(t.k.sessionCount, 40);
      for (const p of peers) p.sendMessage(errorFrame(true));
      // The kernel closes its end; each peer sees the close without closing its own side first.
      await until(() => peers.every((p) => p.closed), 30_000, "every connection closed by the kernel");
      await until(() => t.k.sessionCount === 0, 30_000, "no sessions left");
      await until(() => fds() <= before, 30_000, "the kernel's 40 descriptors released");
      const c = await t.admin();
      assert.equal((await c.system.health()).status, "ok");
    });
  });

  it("anything before HELLO other than HELLO is a fatal PROTOCOL error; a peer's log lines are bounded, then one 'suppressed' line", async () => {
    const { logger, lines } = recordingLogger();
    // No control-frame rate: the 2,000 ERRORs below are for the log's bound (past the rate the session would end, control-frames.test).
    await withKernel({ logger, peerLogLines: 5, peerLogWindowMs: 1000, controlFrameRate: 0 }, async (t) => {
      // Before HELLO: a non-fatal ERROR, a PONG, an ATTEST are each fatal UNEXPECTED_MESSAGE.
      for (const m of [
        errorFrame(false),
        { type: "PONG", body: { seq: 1 } } as Message,
        { type: "ATTEST", body: { signature: Buffer.alloc(64), tokens: [] } } as Message,
      ]) {
        const p = await RawPeer.connect(t.k.socketPath);
        p.sendMessage(m);
        const e = await p.next("ERROR");
        assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "UNEXPECTED_MESSAGE", true], m.type);
        await until(() => p.closed, 30_000, `closed after ${m.type}`);
      }
      // After WELCOME non-fatal ERRORs are allowed, but each peer's lines are bounded.
      const p = await RawPeer.admin(t);
      const flood = Buffer.concat(Array.from({ length: 2000 }, () => encodeMessage(errorFrame(false))));
      p.send(flood);
      p.request(1, { op: "system.health", target: "kernel://", args: {} }, { persona: "admin" });
      assert.equal((await p.response(1)).status, "SUCCESS", "the session is served after the flood");
      const fromAdmin = () => lines.filter((l) => l.peer === "admin" && l.msg === "peer reported an error");
      const summaries = () => lines.filter((l) => l.peer === "admin" && l.suppressed !== undefined);
      const accounted = () => fromAdmin().length + summaries().reduce((n, l) => n + (l.suppressed ?? 0), 0);
      await until(() => accounted() === 2000, 10_000, "every line written or counted in a summary");
      assert.ok(summaries().length >= 1);
      assert.ok(fromAdmin().length <= 5 * (summaries().length + 1), `${fromAdmin().length} lines written`);
      p.close();
    });
  });

  it("before WELCOME a frame may not be larger than a handshake needs: a 1 MiB HELLO is fatal TOO_LARGE before it is buffered", async () => {
    await withKernel({}, async (t) => {
      const hello = await RawPeer.connect(t.k.socketPath);
      const header = Buffer.alloc(HEADER_SIZE);
      writeHeader(header, 0, { type: MessageType.HELLO, flags: 0, stream: 0, length: 1 << 20 });
      hello.send(header);
      const e = await hello.next("ERROR");
      assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "TOO_LARGE", true]);
      await until(() => hello.closed, 30_000, "closed");
      // After HELLO an ATTEST may carry its tokens (up to 1 MiB), not a session's maxBody.
      const attest = await RawPeer.connect(t.k.socketPath);
      await attest.hello(adminIdentity(t.k));
      writeHeader(header, 0, { type: MessageType.ATTEST, flags: 0, stream: 0, length: 2 << 20 });
      attest.send(header);
      const e2 = await attest.next("ERROR");
      assert.deepEqual([e2.body.class, e2.body.code], ["PROTOCOL", "TOO_LARGE"]);
      // A session gets its full maxBody once it is one.
      const c = await t.admin();
      await c.storage.write("obj://ws1/two-mib", Buffer.alloc(2 << 20, 1));
      assert.equal((await c.system.health()).status, "ok");
    });
  });

  it("half-open connections never take session slots; over the budget the oldest are shed, never a session", async () => {
    await withKernel({ maxSessions: 4, adminReserve: 1, preauthPerTransport: 8 }, async (t) => {
      const p = await t.persona("worker", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const w1 = await t.connect(p.identity, [p.token]);
      // 40 local connections that send half a frame and stay silent.
      const idle: RawPeer[] = [];
      for (let i = 0; i < 40; i++) {
        const r = await RawPeer.connect(t.k.socketPath);
        r.send("0101");
        idle.push(r);
      }
      await until(() => idle.filter((r) => r.closed).length === 32, 30_000, "32 of the 40 shed");
      for (const r of idle.slice(0, 32)) {
        const e = await r.next("ERROR");
        assert.deepEqual([e.body.class, e.body.code], ["RESOURCE", "HANDSHAKE_SHED"]);
      }
      assert.equal(t.k.handshakingCount, 8);
      assert.ok(!allAudit(t.k).some((r) => r.message?.includes("HANDSHAKE_SHED")), "a shed connection leaves no audit record");
      // A persona still gets in (the newest handshake sheds an idle one), the attested session untouched.
      const w2 = await t.connect(p.identity, [p.token]);
      assert.equal((await w2.system.health()).status, "ok");
      assert.equal((await w1.system.health()).status, "ok");
      // Sessions full for personas (4 - 1 reserved, the harness holds an admin one): a third worker is refused ...
      await assert.rejects(t.connect(p.identity, [p.token]), /3 sessions|TOO_MANY_SESSIONS/);
      // ... and the admin's reserved slot is still there.
      const admin = await t.admin();
      assert.equal((await admin.system.health()).status, "ok");
      for (const r of idle) r.close();
    });
  });

  it("connections that sent HELLO are shed after those that sent nothing, whatever their age", async () => {
    await withKernel({ preauthPerTransport: 4 }, async (t) => {
      const started: RawPeer[] = [];
      const challenges: Buffer[] = [];
      for (let i = 0; i < 2; i++) {
        const r = await RawPeer.connect(t.k.socketPath);
        challenges.push((await r.hello(adminIdentity(t.k))).bytes); // now waiting to attest
        started.push(r);
      }
      const silent: RawPeer[] = [];
      for (let i = 0; i < 10; i++) silent.push(await RawPeer.connect(t.k.socketPath));
      await until(() => silent.filter((r) => r.closed).length === 8, 30_000, "8 silent connections shed");
      assert.ok(!started.some((r) => r.closed), "the handshakes under way were kept");
      // ... and can still finish theirs.
      const a = started[0] as RawPeer;
      a.sendMessage({ type: "ATTEST", body: { signature: a.sign(adminIdentity(t.k), challenges[0] as Buffer), tokens: [] } });
      await a.next("WELCOME");
      for (const r of [...started, ...silent]) r.close();
    });
  });

  it("while a local process keeps opening silent connections, nine legitimate connect-and-call rounds all succeed", async () => {
    const t = await startKernel({ preauthPerTransport: 16, maxSessions: 20 });
    const flood: RawPeer[] = [];
    let flooding = true;
    const attacker = (async () => {
      while (flooding) {
        const r = await RawPeer.connect(t.k.socketPath).catch(() => undefined);
        if (!r) continue;
        r.send("4b50");
        flood.push(r);
      }
    })();
    try {
      for (let i = 0; i < 9; i++) {
        const c = await t.admin();
        assert.equal((await c.system.health()).status, "ok", `round ${i}`);
        await c.close();
      }
      assert.ok(flood.length > 16, `the flood outran the budget (${flood.length} connections)`);
      assert.ok(t.k.handshakingCount <= 16);
    } finally {
      flooding = false;
      await attacker;
      for (const r of flood) r.close();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("one gRPC connection with 1,024 idle streams locks no one out (per-address budget)", async () => {
    // The per-address budget of half-open streams is what is tried here: the stream rate (case 349) would refuse most first.
    const t = await startKernel({ grpcListen: "127.0.0.1:0", preauthPerPeer: 16, grpcStreamPeerRate: 0 });
    const attacker = new grpc.Client(t.k.grpcAddress as string, grpc.credentials.createInsecure());
    try {
      const calls = Array.from({ length: 1024 }, () => {
        const call = attacker.makeBidiStreamRequest(
          "/kpip.v1.Kernel/Session",
          (b: Buffer) => b,
          (b: Buffer) => b,
        );
        call.on("data", () => {});
        call.on("error", () => {});
        call.write(Buffer.from("01", "hex"));
        return call;
      });
      // Each stream beyond the per-address budget sheds an older one as it arrives (kernel side).
      const shed = async () => (await (t.k.metrics as KernelMetrics).handshakesShed.get()).values[0]?.value ?? 0;
      await until(async () => (await shed()) >= 1024 - 16, 90_000, "the attacker's streams beyond its budget shed");
      assert.ok(t.k.handshakingCount <= 16, `half-open ${t.k.handshakingCount}`);
      const overGrpc = await KernelClient.connect({
        grpc: { address: t.k.grpcAddress as string, insecure: true },
        identity: adminIdentity(t.k),
        tokens: [t.adminToken],
        reconnect: false,
      });
      assert.equal((await overGrpc.system.health()).status, "ok");
      await overGrpc.close();
      const local = await t.admin();
      assert.equal((await local.system.health()).status, "ok");
      for (const c of calls) c.cancel();
    } finally {
      attacker.close();
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("oversized requests against a real kernel", () => {
  it("storage.write over maxBody: RequestTooLargeError naming the limit, nothing sent or audited, the session kept", async () => {
    await withKernel({ maxBodyBytes: 1 << 20, maxObjectBytes: 900 * 1024 }, async (t) => {
      const c = await t.admin();
      const err = await c.storage.write("obj://ws1/big", Buffer.alloc(2 << 20, 7)).catch((e) => e);
      assert.ok(err instanceof RequestTooLargeError, String(err));
      assert.equal(err.limit, 1 << 20);
      assert.equal(c.connections, 1, "no reconnect");
      assert.equal((await c.system.health()).status, "ok");
      assert.ok(!allAudit(t.k).some((r) => r.op === "storage.write"), "the kernel never saw it");
    });
  });
});

describe("an agent's connection, a socketpair the kernel made at its spawn", () => {
  it("has no peer address: agents handshaking at once are not one peer to preauthPerPeer, and their session records name no peer", {
    skip: sandboxSkip,
  }, async () => {
    await withKernel({ preauthPerPeer: 1 }, async (t) => {
      const c = await t.admin();
      const shed = async () => (await (t.k.metrics as KernelMetrics).handshakesShed.get()).values[0]?.value ?? 0;
      // A silent agent: its connection stays half-open (no HELLO) while the next agent's is accepted.
      const quiet = await c.agents.spawn("node", "quiet", {
        args: ["-e", "setTimeout(() => {}, 60000)"],
        rights: [],
        lifetimeMs: 60_000,
      });
      const a = await c.agents.spawn("node", "w1", {
        args: [AGENT],
        rights: [{ ops: ["storage.write"], targets: ["obj://ws1/**"] }],
        lifetimeMs: 60_000,
      });
      await until(async () => (await c.agents.status(a.agent as string)).state !== "running", 30_000, "the agent ended");
      const report = JSON.parse(Buffer.from((await c.agents.logs(a.agent as string)).stdout).toString()) as { write?: string };
      assert.equal(report.write, "ok", JSON.stringify(report));
      // Accepted at the spawn, synchronously: a shed would have been counted by now.
      assert.equal(await shed(), 0, "the silent agent's handshake was not shed for the other's");
      const open = allAudit(t.k).find((r) => r.op === "session.open" && r.message === "agent");
      const origin = JSON.parse(open?.detail ?? "{}");
      assert.equal(origin.transport, "agent");
      assert.equal(origin.peer, undefined, `no address to record: ${open?.detail}`);
      await c.agents.kill(quiet.agent as string);
    });
  });

  it("has log lines of its own before attestation: one agent's noisy handshakes do not use up the budget of another's", {
    skip: sandboxSkip,
  }, async () => {
    const { logger, lines } = recordingLogger();
    // Two lines per peer and window, a window longer than the test: a shared budget would be spent by the first two.
    await withKernel({ logger, peerLogLines: 2, peerLogWindowMs: 600_000 }, async (t) => {
      const c = await t.admin();
      const closed = () => lines.filter((l) => l.msg === "session closed on error");
      for (const name of ["noisy1", "noisy2", "noisy3", "other"]) {
        // Not KPIP on its connection: a fatal PROTOCOL error before HELLO, one line in the log.
        await c.agents.spawn("node", name, {
          args: ["-e", "require('node:fs').writeSync(4, 'GET / HTTP/1.1\\r\\n\\r\\n')"],
          rights: [],
          lifetimeMs: 60_000,
        });
      }
      await until(() => closed().length === 4, 30_000, "each agent's failed handshake logged");
      const peers = closed().map((l) => l.peer ?? "");
      assert.equal(new Set(peers).size, 4, `a key per agent's connection: ${peers}`);
      assert.ok(
        peers.every((p) => p.startsWith("agent:")),
        peers.join(", "),
      );
      assert.ok(!lines.some((l) => l.suppressed !== undefined), "nothing suppressed");
    });
  });
});
