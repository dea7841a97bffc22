import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type CborMap, generateIdentity, type Identity, KpipError } from "@kpip/protocol";
import { SessionOpenRate } from "../src/session/open-rate.js";
import { adminIdentity, sandboxSkip, until, withKernel } from "./harness.js";
import { allAudit, RawPeer } from "./wire.js";

const AGENT = fileURLToPath(new URL("../../test/fixtures/agent.mjs", import.meta.url));
const HEALTH = [{ ops: ["system.health"], targets: ["kernel://"] }];

type Outcome = "open" | { class: string; code: string; message: string; fatal: boolean };

/** One raw connect → HELLO → ATTEST → close, as a looping peer does it: the WELCOME, or the fatal ERROR instead. */
async function openOnce(path: string, id: Identity, measurements?: CborMap): Promise<Outcome> {
  const p = await RawPeer.connect(path);
  try {
    const { bytes } = await p.hello(id);
    p.sendMessage({ type: "ATTEST", body: { signature: p.sign(id, bytes), tokens: [], measurements } });
    const f = await until(
      () => {
        const x = p.frames.find((y) => y.msg.type === "WELCOME" || y.msg.type === "ERROR");
        if (!x && p.closed) throw new Error("closed without WELCOME or ERROR");
        return x;
      },
      30_000,
      "WELCOME or ERROR",
    );
    return f.msg.type === "WELCOME" ? "open" : (f.msg.body as Exclude<Outcome, "open">);
  } finally {
    p.close();
  }
}

/** The rate-limit refusals and opens of `persona` on the record, singly or counted in aggregates. */
function tally(t: { k: Parameters<typeof allAudit>[0] }, persona: string) {
  const rows = allAudit(t.k);
  const opens = rows.filter((r) => r.op === "session.open" && r.persona === persona);
  const single = rows.filter((r) => r.op === "session.handshake" && (r.message ?? "").startsWith("SESSION_RATE_LIMITED:"));
  const agg = rows.filter((r) => r.op === "audit.suppressed" && r.phase === "session");
  const counted = agg.reduce((n, r) => n + ((JSON.parse(r.detail ?? "{}").codes?.SESSION_RATE_LIMITED as number) ?? 0), 0);
  return { opens, single, agg, counted };
}

describe("sessions a persona tree opens are rate-bound (sessionOpenPersonaRate): each open is a durable record", () => {
  it("a persona looping connect → ATTEST (4 KB measurements) → close past the rate is refused RESOURCE/SESSION_RATE_LIMITED; records stay bounded; another persona and the admin are served meanwhile; later it opens again", async () => {
    // Rate 2/s (bursts 10) for opens and for failed-handshake records alike.
    await withKernel({ sessionOpenPersonaRate: 2, auditHandshakeRate: 2 }, async (t) => {
      const m = await t.persona("mallory", HEALTH);
      const b = await t.persona("bob", HEALTH);
      const measurements = { blob: Buffer.alloc(4000, 0x61) };
      let opened = 0;
      const refusals: Exclude<Outcome, "open">[] = [];
      let bobDone = false;
      const start = Date.now();
      // Mallory loops in batches of 10 until 60 attempts are made and bob has been served meanwhile.
      const loop = (async () => {
        for (let i = 0; i < 60 || !bobDone; i += 10) {
          for (const r of await Promise.all(
            Array.from({ length: 10 }, () => openOnce(t.k.socketPath, m.identity, measurements)),
          )) {
            if (r === "open") opened++;
            else refusals.push(r);
          }
        }
      })();
      // Bob, another tree, opens sessions and is served while mallory is being refused.
      const bob = (async () => {
        await until(() => refusals.length > 0, 60_000, "mallory refused");
        for (let i = 0; i < 3; i++) {
          const c = await t.connect(b.identity, [b.token]);
          assert.equal((await c.system.health()).status, "ok");
          await c.close();
        }
        bobDone = true;
      })();
      await Promise.all([loop, bob]);
      const elapsed = (Date.now() - start) / 1000;
      // The bucket's guarantee, over the loop's measured time: at most a burst and the rate since.
      const bound = 10 + 2 * elapsed;
      assert.ok(opened <= bound, `${opened} opens in ${elapsed} s, at most ${bound}`);
      assert.ok(refusals.length > 0);
      for (const r of refusals) {
        assert.deepEqual([r.class, r.code, r.fatal], ["RESOURCE", "SESSION_RATE_LIMITED", true]);
        assert.match(
          r.message,
          /^mallory opens sessions faster than sessionOpenPersonaRate 2\/s \(bursts 10\); try again in \d+ ms$/,
        );
      }
      // Every open has its record; every refusal a record of its own or a count in an aggregate.
      const x = await until(
        () => {
          const y = tally(t, "mallory");
          return y.opens.length === opened && y.single.length + y.counted === refusals.length ? y : undefined;
        },
        30_000,
        "every open and refusal on the record",
      );
      assert.ok(x.single.length <= bound, `${x.single.length} refusal records in ${elapsed} s, at most ${bound}`);
      for (const r of x.single) assert.deepEqual([r.persona, r.errorClass, r.status], ["mallory", "RESOURCE", "FAILURE"]);
      if (x.counted > 0) assert.ok(x.agg.some((r) => JSON.parse(r.detail ?? "{}").of === "session.handshake"));
      // The admin is not bound by it: more than a burst of opens, all served.
      const admin = adminIdentity(t.k);
      const adminOpens = await Promise.all(Array.from({ length: 15 }, () => openOnce(t.k.socketPath, admin)));
      assert.ok(adminOpens.every((r) => r === "open"));
      // Waiting lets mallory in again (polled: the bucket refills at the rate).
      await until(async () => (await openOnce(t.k.socketPath, m.identity)) === "open", 30_000, "mallory opens again");
    });
  });

  it("an honest client's first connect refused SESSION_RATE_LIMITED tries again with backoff and gets in once its tree's rate allows", async () => {
    // The kernel's clock stands still: no bucket refills until the test moves it.
    let now = Date.now();
    await withKernel(
      { clock: () => now, sessionOpenPersonaRate: 1, auditHandshakeRate: 1000, metricsListen: "127.0.0.1:0" },
      async (t) => {
        const m = await t.persona("mallory", HEALTH);
        for (let i = 0; i < 5; i++) assert.equal(await openOnce(t.k.socketPath, m.identity), "open");
        const refused = await openOnce(t.k.socketPath, m.identity);
        assert.notEqual(refused, "open");
        // Counted for the operator, whatever the record rate let through.
        const metrics = await (await fetch(`http://${t.k.metricsAddress}/metrics`)).text();
        assert.match(metrics, /kpip_handshakes_failed_total\{transport="uds",code="SESSION_RATE_LIMITED"\} 1\b/);
        // The reference client with its default backoff: refused, and trying again.
        let settled = false;
        const connecting = t.connect(m.identity, [m.token], { connectTimeoutMs: 60_000 }).finally(() => {
          settled = true;
        });
        await until(() => tally(t, "mallory").single.length >= 3, 30_000, "the client refused twice");
        assert.equal(settled, false, "still trying");
        now += 1000;
        const c = await connecting;
        assert.equal((await c.system.health()).status, "ok");
        // A client given up on (timeout) reports the typed, retryable error.
        const fail = await t.connect(m.identity, [m.token], { connectTimeoutMs: 300 }).catch((e: unknown) => e);
        assert.ok(fail instanceof KpipError, String(fail));
        assert.deepEqual([fail.errorClass, fail.code, fail.retryable], ["RESOURCE", "SESSION_RATE_LIMITED", true]);
      },
    );
  });

  it("SessionOpenRate: a burst of 5× the rate for a tree's members together, another for its root alone (members cannot lock the root out), the admin's registrations each their own; refilled by the rate; the admin and rate 0 unbound", () => {
    let now = 0;
    const roots = (p: string) => p.split("/")[0] as string;
    const r = new SessionOpenRate({ rate: 2, adminPersona: "admin" }, () => now);
    const take = (p: string) => r.take(p, roots(p));
    // The members of mallory's tree share one bucket: 10 opens at 5 each are refused past 10.
    for (let i = 0; i < 5; i++) assert.equal(take("mallory/agent.w1"), undefined);
    for (let i = 0; i < 5; i++) assert.equal(take("mallory/worker"), undefined);
    assert.match(take("mallory/worker") ?? "", /^mallory \(with the personas under it\) .* try again in 500 ms$/);
    assert.notEqual(take("mallory/agent.w1"), undefined);
    // ...which leaves the root its own.
    for (let i = 0; i < 10; i++) assert.equal(take("mallory"), undefined);
    assert.notEqual(take("mallory"), undefined);
    // Another tree has its own buckets; the admin none; the admin's registrations one each.
    assert.equal(take("bob"), undefined);
    for (let i = 0; i < 100; i++) assert.equal(take("admin"), undefined);
    for (let i = 0; i < 10; i++) assert.equal(take("admin/x/helper"), undefined);
    assert.notEqual(take("admin/x/other"), undefined, "admin/x's members are spent");
    assert.equal(take("admin/x"), undefined, "admin/x itself is not");
    for (let i = 0; i < 10; i++) assert.equal(take("admin/y/helper"), undefined, "admin/y is another tree");
    // Half a second later one more (rate 2/s).
    now += 500;
    assert.equal(take("mallory"), undefined);
    assert.notEqual(take("mallory"), undefined);
    const off = new SessionOpenRate({ rate: 0, adminPersona: "admin" }, () => now);
    for (let i = 0; i < 100; i++) assert.equal(off.take("mallory", "mallory"), undefined);
  });
});

describe("the session-open rate and what the kernel connects itself", () => {
  it("an agent's inherited connection is not bound by its tree's open rate: spawned while the tree's members are refused, it connects and works", {
    skip: sandboxSkip,
  }, async () => {
    // The clock stands still: the members' bucket, once spent, stays spent.
    const now = Date.now();
    await withKernel({ clock: () => now, sessionOpenPersonaRate: 1, auditHandshakeRate: 1000 }, async (t) => {
      const rita = await t.persona("rita", [
        { ops: ["persona.register", "token.mint"], targets: ["persona://rita/**"] },
        { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
        { ops: ["storage.write"], targets: ["obj://ws1/**"] },
        ...HEALTH,
      ]);
      const c = await t.connect(rita.identity, [rita.token]);
      const sub = generateIdentity("rita/sub");
      await c.personas.register("rita/sub", sub.publicKey);
      // rita/sub spends the tree's members' bucket (a burst of 5).
      for (let i = 0; i < 5; i++) assert.equal(await openOnce(t.k.socketPath, sub), "open");
      assert.notEqual(await openOnce(t.k.socketPath, sub), "open");
      const a = await c.agents.spawn("node", "w1", {
        args: [AGENT],
        rights: [{ ops: ["storage.write"], targets: ["obj://ws1/**"] }],
        lifetimeMs: 60_000,
      });
      await until(async () => (await c.agents.status(a.agent as string)).state !== "running", 30_000, "the agent ended");
      const report = JSON.parse(Buffer.from((await c.agents.logs(a.agent as string)).stdout).toString()) as Record<
        string,
        unknown
      >;
      assert.equal(report.write, "ok", JSON.stringify(report));
      // The tree's root has a bucket of its own: its members did not spend it.
      assert.equal(await openOnce(t.k.socketPath, rita.identity), "open");
    });
  });
});
