import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadIdentity } from "@kpip/client";
import { type CborMap, decodeToken, encodeIntent, generateIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import { decodeRecord } from "../src/audit/record-decode.js";
import { OutcomeRecoveryError, RECOVERED_MESSAGE } from "../src/audit/recover-outcomes.js";
import { Kernel, SqliteStore, verifyAudit } from "../src/index.js";
import { decodeBatches, encodeBatch } from "../src/store/audit-journal.js";
import { klass, removeHome, spawnReady, startKernel, type TestKernel, until } from "./harness.js";
import { RawPeer } from "./wire.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/**
 * A kernel in a child process that SIGKILLs itself at the moment its audit log commits the
 * outcome record of `op` on `target`: after the op's effect committed, before the request is
 * answered — the window a crash used to turn into a second execution. `after`: just after that
 * commit instead (the record is in the audit segment, not yet indexed in SQLite), still unanswered.
 */
async function kernelDyingAfterEffect(home: string, op: string, target: string, when: "before" | "after" = "before") {
  const code = `const { Kernel, SqliteStore } = await import(process.argv[1]);
const [op, target, when] = [process.argv[3], process.argv[4], process.argv[5]];
const append = SqliteStore.prototype.appendAudit;
SqliteStore.prototype.appendAudit = function (rows, ...rest) {
  const outcome = rows.some((r) => r.phase === "outcome" && r.op === op && r.target === target);
  if (outcome && when === "before") process.kill(process.pid, "SIGKILL");
  const v = append.call(this, rows, ...rest);
  if (outcome) process.kill(process.pid, "SIGKILL");
  return v;
};
const k = new Kernel({ home: process.argv[2], logLevel: "silent" });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
  return spawnReady(["--input-type=module", "-e", code, kernelModule, home, op, target, when], "ready");
}

/** Dedupe rows that still name an intent record (answers committed with effects, until a start recorded their outcome). */
function answersNamingIntents(db: Database.Database): number {
  return (db.prepare("SELECT count(*) AS n FROM dedupe WHERE intent_seq IS NOT NULL").get() as { n: number }).n;
}

/**
 * Sends `intent` (request id 7) as the admin to a kernel that dies after its effect, restarts a
 * kernel on the same home and resends it with the same client instance, id and bytes. Returns
 * the retry's response, the restarted kernel and the peer (the caller stops and removes them).
 */
async function crashThenRetry(home: string, op: string, target: string, intent: Uint8Array) {
  const child = await kernelDyingAfterEffect(home, op, target);
  const exited = new Promise((r) => child.once("exit", r));
  const identity = loadIdentity(join(home, "admin.identity"));
  const token = Buffer.from(readFileSync(join(home, "admin.token"), "utf8").trim(), "base64url");
  try {
    const first = await RawPeer.connect(new Kernel({ home, logLevel: "silent" }).socketPath);
    await first.handshake(identity, [token]);
    first.request(7, intent, { persona: identity.persona });
    await exited;
    await until(() => first.closed, 10_000, "the killed kernel's connection to close");
    assert.equal(
      first.frames.find((f) => f.msg.type === "RESPONSE"),
      undefined,
      "the first attempt was never answered",
    );
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  }
  const t = await startKernel({}, home);
  const retry = await RawPeer.connect(t.k.socketPath);
  // The same client instance (RawPeer's HELLO always sends the same one), request id and intent bytes.
  await retry.handshake(identity, [token]);
  retry.request(7, intent, { persona: identity.persona });
  return { t, retry, identity, response: await retry.response(7, 10_000) };
}

/** Audit phases of `op` on `target`, oldest first. */
function phases(t: TestKernel, op: string, target: string): string[] {
  return t.k.inspect
    .queryAudit({ op, limit: 100 })
    .filter((x) => x.target === target)
    .map((x) => x.phase);
}

/** Prepares a home on a kernel that is stopped again before the crash run. */
async function prepared<T>(home: string, setup: (t: TestKernel) => Promise<T>): Promise<T> {
  const t = await startKernel({}, home);
  try {
    return await setup(t);
  } finally {
    await t.stop();
  }
}

interface CrashCase<P> {
  op: string;
  /** Readies the home on a kernel that is stopped again before the crash run. */
  setup?: (t: TestKernel) => Promise<P>;
  target: (p: P) => string;
  args: (p: P) => CborMap;
  /** What the effect left, asserted on the restarted kernel (and its retrying peer). */
  check: (r: Awaited<ReturnType<typeof crashThenRetry>> & { p: P; target: string }) => Promise<void> | void;
}

/**
 * `op` sent to a kernel that dies after the effect, then retried on a restarted one: the retry
 * is SUCCESS, answered from the record (audit: intent, then replay; no second execution), the
 * log verifies, and `check` holds.
 */
async function crashCase<P>(c: CrashCase<P>): Promise<void> {
  const home = mkdtempSync(join(tmpdir(), "kpip-"));
  try {
    const p = await prepared(home, c.setup ?? (async () => undefined as P));
    const target = c.target(p);
    const r = await crashThenRetry(home, c.op, target, encodeIntent({ op: c.op, target, args: c.args(p) }));
    try {
      assert.equal(r.response.status, "SUCCESS", r.response.message);
      assert.deepEqual(
        phases(r.t, c.op, target),
        ["intent", "outcome", "replay"],
        "the first attempt's intent, its outcome written by the restart, then the retry answered from the record; no second execution",
      );
      await c.check({ ...r, p, target });
    } finally {
      r.retry.close();
      await r.t.stop();
    }
    const s = new SqliteStore(join(home, "kernel.db"));
    const v = verifyAudit(s);
    s.close();
    assert.ok(v.ok, v.firstBad?.reason);
  } finally {
    removeHome(home);
  }
}

const healthRights = [{ ops: ["system.health"], targets: ["kernel://"] }];

/** Runs `f` on the home's store, closed after. */
function withStore<T>(home: string, f: (s: SqliteStore) => T): T {
  const s = new SqliteStore(join(home, "kernel.db"));
  try {
    return f(s);
  } finally {
    s.close();
  }
}

describe("an effect and its dedupe record commit together (PROTOCOL §11 rule 9)", () => {
  it("persona.register killed between effect and answer: the retry gets the recorded SUCCESS, not 'already registered'", async () => {
    const key = generateIdentity("carol").publicKey;
    await crashCase({
      op: "persona.register",
      target: () => "persona://carol",
      args: () => ({ publicKey: key }),
      check: ({ t }) => assert.deepEqual(Buffer.from(t.k.inspect.getPersona("carol")?.publicKey ?? []), Buffer.from(key)),
    });
  });

  it("token.refresh killed between effect and answer: the retry gets the recorded copy; one copy was made, not two", async () => {
    await crashCase({
      op: "token.refresh",
      setup: async (t) => Buffer.from(t.adminToken, "base64url"),
      target: (raw) => `token://${decodeToken(raw).claims.id}`,
      args: (raw) => ({ token: raw }),
      check: ({ t, p: raw, response }) => {
        const copies = t.k.inspect.tokensDerivedFrom(decodeToken(raw).claims.id);
        assert.deepEqual(
          copies.map((c) => c.id),
          [(response.payload as { id: string }).id],
          "exactly one refreshed copy, the one answered",
        );
      },
    });
  });

  it("token.revoke killed between effect and answer: the retry gets the recorded first answer, not 'already revoked'", async () => {
    await crashCase({
      op: "token.revoke",
      setup: async (t) => (await t.persona("erin", healthRights)).id,
      target: (id) => `token://${id}`,
      args: () => ({}),
      check: ({ t, p: id, response }) => {
        assert.deepEqual(response.payload, { id, revoked: true, already: false });
        assert.notEqual(t.k.inspect.getToken(id)?.revokedAt ?? null, null, "the revocation is stored");
      },
    });
  });

  it("persona.remove killed between effect and answer: the retry gets the recorded SUCCESS, not 'not registered'", async () => {
    await crashCase({
      op: "persona.remove",
      setup: async (t) => (await t.persona("dave", healthRights)).id,
      target: () => "persona://dave",
      args: () => ({}),
      check: ({ t, p: tokenId, response }) => {
        assert.deepEqual(response.payload, { removed: "dave", alsoRemoved: [], sessionsEnded: 0, tokensRevoked: 1 });
        assert.equal(t.k.inspect.getPersona("dave"), undefined);
        assert.notEqual(t.k.inspect.getToken(tokenId)?.revokedAt ?? null, null, "its token's revocation committed with it");
      },
    });
  });

  it("a write whose kernel was SIGKILLed between effect and answer is answered from the record on retry, its generation advanced once", async () => {
    await crashCase({
      op: "storage.write",
      target: () => "obj://crash/once",
      args: () => ({ data: "exactly once" }),
      check: async ({ retry, identity, response, target }) => {
        assert.deepEqual(response.payload, { generation: 1, size: 12 });
        retry.request(8, encodeIntent({ op: "storage.stat", target, args: {} }), { persona: identity.persona });
        const stat = await retry.response(8, 10_000);
        assert.equal((stat.payload as { generation: number }).generation, 1, "the object's generation advanced exactly once");
      },
    });
  });
});

describe("an effect committed before its kernel was killed is on the record after the next start", () => {
  /** Sends `intent` as the admin to a kernel that dies between its effect and its outcome record; never retried. */
  async function killedAfterEffect(
    home: string,
    op: string,
    target: string,
    intent: Uint8Array,
    id: number,
    when: "before" | "after" = "before",
  ): Promise<void> {
    const child = await kernelDyingAfterEffect(home, op, target, when);
    const exited = new Promise((r) => child.once("exit", r));
    const identity = loadIdentity(join(home, "admin.identity"));
    const token = Buffer.from(readFileSync(join(home, "admin.token"), "utf8").trim(), "base64url");
    try {
      const p = await RawPeer.connect(new Kernel({ home, logLevel: "silent" }).socketPath);
      await p.handshake(identity, [token]);
      p.request(id, intent, { persona: identity.persona });
      // Killed at its outcome record; a refusal (no outcome) fails here instead of waiting for ever.
      // Over once the connection ends, answered or not (not polling on for a minute after the kill).
      const answer = () => p.frames.find((f) => f.msg.type === "RESPONSE" && (f.msg.body as { id: number }).id === id);
      const answered = until(() => answer() ?? p.closed, 60_000, "an answer or the connection's end").then(() => {
        const r = answer()?.msg.body as { status: string; message?: string } | undefined;
        if (r) assert.fail(`answered: ${r.status} ${r.message}`);
      });
      await Promise.race([exited, answered]);
      await answered;
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    }
  }

  it("a write and a mint whose outcome records a SIGKILL cut off get them at the next start, once, with the intent's persona, session and token", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      await prepared(home, async () => undefined);
      await killedAfterEffect(
        home,
        "storage.write",
        "obj://crash/hidden",
        encodeIntent({ op: "storage.write", target: "obj://crash/hidden", args: { data: "was it written?" } }),
        7,
      );
      const mint = encodeIntent({
        op: "token.mint",
        target: "persona://admin",
        args: { rights: [{ ops: ["storage.read"], targets: ["obj://crash/**"] }], ttlMs: 60_000 },
      });
      await killedAfterEffect(home, "token.mint", "persona://admin", mint, 8);
      // Two starts: the second must not record them again.
      for (let i = 0; i < 2; i++) {
        const t = await startKernel({}, home);
        await t.stop();
      }
      withStore(home, (s) => {
        assert.ok(verifyAudit(s).ok);
        const rows = s.queryAudit({ limit: 1000 });
        for (const [op, target] of [
          ["storage.write", "obj://crash/hidden"],
          ["token.mint", "persona://admin"],
        ] as const) {
          const mine = rows.filter((r) => r.op === op && r.target === target);
          assert.deepEqual(
            mine.map((r) => r.phase),
            ["intent", "outcome"],
            `${op}: the effect happened (its answer committed with it), so its outcome is on the record, once`,
          );
          const [intent, outcome] = mine as [(typeof mine)[0], (typeof mine)[0]];
          assert.equal(outcome.status, "SUCCESS");
          assert.equal(outcome.message, RECOVERED_MESSAGE);
          for (const f of ["persona", "session", "requestId", "caps", "intentHash"] as const) {
            assert.deepEqual(outcome[f], intent[f], `${op}: the outcome names the intent's ${f}`);
          }
          const detail = JSON.parse(outcome.detail ?? "{}");
          assert.equal(detail.recovered, true);
          if (op === "storage.write") assert.equal(detail.generation, 1);
          else {
            // The minted token as its outcome summary names it: who it is for, from which token, what it grants.
            assert.equal(detail.token.sub, "admin");
            assert.equal(detail.token.parent, (intent.caps ?? "").split(":")[1]);
            assert.deepEqual(detail.token.rights, [["storage.read", "obj://crash/**"]]);
            assert.equal(s.getToken(detail.token.id)?.sub, "admin", "the token the record names is the one stored");
          }
        }
        assert.equal(answersNamingIntents(s.db), 0, "recorded now: their answers name their intent records no more");
      });
    } finally {
      removeHome(home);
    }
  });

  it("a kill after the outcome record reached the audit segment and before SQLite indexed it: the next start finds that record and writes no other", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      await prepared(home, async () => undefined);
      await killedAfterEffect(
        home,
        "storage.write",
        "obj://crash/indexed",
        encodeIntent({ op: "storage.write", target: "obj://crash/indexed", args: { data: "was it recorded?" } }),
        7,
        "after",
      );
      const killed = new Database(join(home, "kernel.db"), { readonly: true });
      try {
        assert.equal(answersNamingIntents(killed), 1, "the answer names its intent record");
      } finally {
        killed.close();
      }
      const t = await startKernel({}, home);
      await t.stop();
      withStore(home, (s) => {
        assert.ok(verifyAudit(s).ok);
        const mine = s.queryAudit({ op: "storage.write", limit: 100 }).filter((r) => r.target === "obj://crash/indexed");
        assert.deepEqual(
          mine.map((r) => [r.phase, r.status, r.message]),
          [
            ["intent", null, null],
            ["outcome", "SUCCESS", null],
          ],
          "the kernel's own outcome record, and no recovered one",
        );
        assert.equal(
          answersNamingIntents(s.db),
          1,
          "still naming it: its outcome is on the log, where a later start finds it too",
        );
      });
    } finally {
      removeHome(home);
    }
  });

  it("a revocation and a persona removal whose outcome records a SIGKILL cut off get the records their requests would have had: what each ended, and refusals naming the revocation's record", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      const { erin, dave } = await prepared(home, async (t) => ({
        erin: await t.persona("erin", healthRights),
        dave: await t.persona("dave", healthRights),
      }));
      const revoke = `token://${erin.id}`;
      await killedAfterEffect(home, "token.revoke", revoke, encodeIntent({ op: "token.revoke", target: revoke, args: {} }), 7);
      const remove = "persona://dave";
      await killedAfterEffect(
        home,
        "persona.remove",
        remove,
        encodeIntent({ op: "persona.remove", target: remove, args: {} }),
        8,
      );
      const t = await startKernel({}, home);
      try {
        const outcome = (op: string, target: string) => {
          const r = t.k.inspect.queryAudit({ op, limit: 100 }).find((x) => x.target === target && x.phase === "outcome");
          assert.equal(r?.message, RECOVERED_MESSAGE, `${op}: its outcome was recorded at the start`);
          return { seq: r?.seq, detail: JSON.parse(r?.detail ?? "{}") };
        };
        const revoked = outcome("token.revoke", revoke);
        // What the request's own outcome record says (primitives/token.ts, persona.ts), and that it was recovered.
        assert.deepEqual(revoked.detail, { ended: [erin.id], recovered: true, revoked: erin.id, status: "SUCCESS" });
        assert.deepEqual(outcome("persona.remove", remove).detail, {
          ended: [dave.id],
          recovered: true,
          removed: ["dave"],
          status: "SUCCESS",
        });
        const c = await t.connect(erin.identity, []);
        const e = await c.call("system.health", "kernel://", {}, { caps: [erin.token] }).catch((x) => x);
        assert.ok(
          klass("CAPABILITY", new RegExp(`^token ${erin.id} is revoked \\(audit record ${revoked.seq}\\)$`))(e),
          String(e),
        );
        await c.close();
      } finally {
        await t.stop();
      }
    } finally {
      removeHome(home);
    }
  });

  it("a start whose recovered outcome record does not commit refuses to serve and leaves it to the next start, which records it once", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      await prepared(home, async () => undefined);
      const target = "obj://crash/retried";
      await killedAfterEffect(
        home,
        "storage.write",
        target,
        encodeIntent({ op: "storage.write", target, args: { data: "x" } }),
        7,
      );
      // The audit store refuses the commit holding the recovered record (a full disk, an I/O error).
      const append = SqliteStore.prototype.appendAudit;
      let refused = 0;
      SqliteStore.prototype.appendAudit = function (this: SqliteStore, rows, ...rest) {
        if (rows.some((r) => r.message === RECOVERED_MESSAGE)) {
          refused++;
          throw new Error("disk I/O error");
        }
        return append.call(this, rows, ...rest);
      };
      const k = new Kernel({ home, logLevel: "silent" });
      let started: unknown;
      try {
        started = await k.start().then(
          () => undefined,
          (e: unknown) => e,
        );
        // Started after all: stopped, so a failure here ends the test instead of hanging it.
        if (started === undefined) await k.stop();
      } finally {
        SqliteStore.prototype.appendAudit = append;
      }
      assert.ok(started instanceof OutcomeRecoveryError, `the start refused to serve: ${started}`);
      assert.equal(refused, 1, "the recovered record was appended, and its commit refused");
      const t = await startKernel({}, home);
      await t.stop();
      withStore(home, (s) => {
        assert.ok(verifyAudit(s).ok);
        const mine = s.queryAudit({ limit: 1000 }).filter((r) => r.op === "storage.write" && r.target === target);
        assert.deepEqual(
          mine.map((r) => [r.phase, r.message]),
          [
            ["intent", null],
            ["outcome", RECOVERED_MESSAGE],
          ],
          "the next start recorded the outcome the failed one could not, once",
        );
      });
    } finally {
      removeHome(home);
    }
  });
});

describe("many effects around the one a SIGKILL cut off: every outcome on the record once (no index finds them)", () => {
  const BEFORE = 300;
  const BURST = 64;

  /**
   * One kill: BEFORE writes answered 25 at a time, then BURST pipelined on one connection (the
   * kernel takes them in one read: their effects commit in one turn), the victim in the middle;
   * the kernel SIGKILLs itself as the victim's outcome record is appended (`when`: before it
   * reaches the segment, or after, before SQLite indexes it). Ids from `base` (one client
   * instance across runs: another run's ids would be answered from the record).
   */
  async function killedAmongMany(home: string, base: number, when: "before" | "after"): Promise<string[]> {
    const victim = `obj://many/${base + BEFORE + BURST / 2}`;
    const child = await kernelDyingAfterEffect(home, "storage.write", victim, when);
    const exited = new Promise((r) => child.once("exit", r));
    const identity = loadIdentity(join(home, "admin.identity"));
    const token = Buffer.from(readFileSync(join(home, "admin.token"), "utf8").trim(), "base64url");
    const targets: string[] = [];
    const write = (id: number) => {
      const target = `obj://many/${id}`;
      targets.push(target);
      p.request(id, encodeIntent({ op: "storage.write", target, args: { data: `v${id}` } }), { persona: identity.persona });
    };
    const p = await RawPeer.connect(new Kernel({ home, logLevel: "silent" }).socketPath);
    try {
      await p.handshake(identity, [token]);
      // In rounds of 25 answered together: many commits, without a round trip for each write.
      for (let i = 0; i < BEFORE; i += 25) {
        for (let j = i; j < i + 25; j++) write(base + j);
        for (let j = i; j < i + 25; j++) assert.equal((await p.response(base + j)).status, "SUCCESS");
      }
      for (let i = BEFORE; i < BEFORE + BURST; i++) write(base + i);
      await exited;
      await until(() => p.closed, 10_000, "the killed kernel's connection to close");
      assert.equal(
        p.frames.find((f) => f.msg.type === "RESPONSE" && (f.msg.body as { id: number }).id === base + BEFORE + BURST / 2),
        undefined,
        "the victim was never answered",
      );
    } finally {
      p.close();
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    }
    return targets;
  }

  /**
   * Every object written has exactly one outcome record, SUCCESS, after its one intent record; a
   * write whose effect never committed has its intent alone. Returns the targets whose outcome a start recovered.
   */
  function everyEffectRecordedOnce(home: string, targets: string[]): Set<string> {
    return withStore(home, (s) => {
      assert.ok(verifyAudit(s).ok);
      const byTarget = new Map<string, { phase: string; status: string | null; message: string | null }[]>();
      for (let seq = 1; ; ) {
        const rows = s.scanAudit(seq, 1024);
        if (rows.length === 0) break;
        for (const r of rows)
          if (r.op === "storage.write" && r.target) {
            const l = byTarget.get(r.target) ?? [];
            l.push({ phase: r.phase, status: r.status, message: r.message });
            byTarget.set(r.target, l);
          }
        seq = (rows.at(-1) as { seq: number }).seq + 1;
      }
      const recovered = new Set<string>();
      for (const target of targets) {
        const [workspace, path] = target.slice("obj://".length).split("/") as [string, string];
        const stored = s.statObject(workspace, path) !== undefined;
        const phases = byTarget.get(target) ?? [];
        if (stored) {
          assert.deepEqual(
            phases.map((x) => [x.phase, x.status]),
            [
              ["intent", null],
              ["outcome", "SUCCESS"],
            ],
            `${target}: written, so one intent and one SUCCESS outcome`,
          );
          if (phases[1]?.message === RECOVERED_MESSAGE) recovered.add(target);
        } else
          assert.deepEqual(
            phases.map((x) => x.phase),
            phases.length ? ["intent"] : [],
            `${target}: not written, so no outcome`,
          );
      }
      return recovered;
    });
  }

  /** What a home of the kpip before this change looks like: the partial index, and the answers it had cleared. */
  function asAnOlderKpipLeftIt(home: string): void {
    const db = new Database(join(home, "kernel.db"));
    try {
      db.exec("CREATE INDEX IF NOT EXISTS dedupe_effects ON dedupe (after_seq) WHERE intent_seq IS NOT NULL");
      // It cleared answers as their outcome records committed (64 at a time): all but the newest.
      db.exec(
        `UPDATE dedupe SET intent_seq = NULL, after_seq = NULL, detail = NULL, revoked = NULL WHERE rowid <= (SELECT max(rowid) FROM dedupe) - ${2 * BURST}`,
      );
    } finally {
      db.close();
    }
  }

  for (const [when, upgraded] of [
    ["before", false],
    ["after", false],
    ["before", true],
  ] as const) {
    it(`killed ${when} the outcome reached the audit segment${upgraded ? ", on a home an older kpip left with its partial index" : ""}: twice, with ${BEFORE} effects before and a burst of ${BURST} around; each start records what was cut off, once`, async () => {
      const home = mkdtempSync(join(tmpdir(), "kpip-"));
      try {
        await prepared(home, async () => undefined);
        const targets: string[] = [];
        let recovered = 0;
        for (let run = 0; run < 2; run++) {
          targets.push(...(await killedAmongMany(home, 1000 * (run + 1), when)));
          if (upgraded && run === 0) asAnOlderKpipLeftIt(home);
          // Two starts: the second (after a clean stop) has nothing to add.
          for (let i = 0; i < 2; i++) {
            const t = await startKernel({}, home);
            await t.stop();
          }
          const now = everyEffectRecordedOnce(home, targets);
          const victim = `obj://many/${1000 * (run + 1) + BEFORE + BURST / 2}`;
          if (when === "before") {
            assert.ok(
              now.size > recovered,
              `run ${run}: the start recorded the effects the kill cut off (${now.size - recovered})`,
            );
            assert.ok(now.has(victim), "the victim's outcome, cut off before the segment, recorded by the start");
          } else {
            // The victim's outcome record was in the segment: indexed at the start, not written again
            // (each target has one outcome: everyEffectRecordedOnce). Effects of the burst whose
            // outcome records were still to be appended (a batch the log committed within the turn,
            // audit/log.ts FLUSH_AFTER_MS, ended before them) are recorded by the start, once.
            assert.ok(!now.has(victim), "the victim's outcome, in the segment, is not written again");
            assert.ok(
              now.size - recovered < BURST,
              `run ${run}: at most the burst's effects recovered (${now.size - recovered})`,
            );
          }
          recovered = now.size;
        }
        const db = new Database(join(home, "kernel.db"), { readonly: true });
        try {
          assert.equal(db.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'dedupe_effects'").pluck().get(), 0);
          assert.equal(answersNamingIntents(db) > 0, true, "the answers recorded as usual still name their intents");
        } finally {
          db.close();
        }
      } finally {
        removeHome(home);
      }
    });
  }
});

describe("an OS crash that loses the audit segment's unsynced tail after SQLite kept the effects' answers", () => {
  it("a write whose intent record survived and whose outcome record was lost with the tail gets its outcome at the next start: its answer was never cleared", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      await prepared(home, async () => undefined);
      // A kernel that runs until it is killed (no op is its trigger).
      const child = await kernelDyingAfterEffect(home, "no.such.op", "none://");
      const exited = new Promise((r) => child.once("exit", r));
      const identity = loadIdentity(join(home, "admin.identity"));
      const token = Buffer.from(readFileSync(join(home, "admin.token"), "utf8").trim(), "base64url");
      const WRITES = 200;
      const CUT = 100;
      try {
        const p = await RawPeer.connect(new Kernel({ home, logLevel: "silent" }).socketPath);
        await p.handshake(identity, [token]);
        for (let i = 0; i < WRITES; i++) {
          const target = `obj://os/${i}`;
          p.request(100 + i, encodeIntent({ op: "storage.write", target, args: { data: `v${i}` } }), {
            persona: identity.persona,
          });
          assert.equal((await p.response(100 + i)).status, "SUCCESS");
        }
        // Every answer's commit and every outcome record's index commit is in SQLite by now.
        await p.barrier(99);
        p.close();
      } finally {
        child.kill("SIGKILL");
        await exited;
      }
      // The page cache lost the segment from the batch after write CUT's intent record: its
      // outcome record and everything after (SQLite's WAL, synced on its own schedule, kept all).
      const dir = join(home, "audit");
      const newest = join(dir, readdirSync(dir).sort().at(-1) as string);
      let end = 0;
      let cut = -1;
      for (const b of decodeBatches(readFileSync(newest))) {
        end += encodeBatch(b).length;
        const rows = b.rows.map((r) => decodeRecord(r.seq, r.hash, r.record));
        if (rows.some((r) => r.phase === "intent" && r.target === `obj://os/${CUT}`)) {
          cut = end;
          break;
        }
      }
      assert.ok(cut > 0, "write CUT's intent record is in the newest segment");
      truncateSync(newest, cut);
      const t = await startKernel({}, home);
      await t.stop();
      withStore(home, (s) => {
        assert.ok(verifyAudit(s).ok);
        const mine = s.queryAudit({ op: "storage.write", limit: 1000 }).filter((r) => r.target === `obj://os/${CUT}`);
        assert.deepEqual(
          mine.map((r) => [r.phase, r.status, r.message]),
          [
            ["intent", null, null],
            ["outcome", "SUCCESS", RECOVERED_MESSAGE],
          ],
          "the effect is on the record: its answer still named its intent record",
        );
        const before = s.queryAudit({ op: "storage.write", limit: 1000 }).filter((r) => r.target === `obj://os/${CUT - 1}`);
        assert.deepEqual(
          before.map((r) => [r.phase, r.message]),
          [
            ["intent", null],
            ["outcome", null],
          ],
          "the write before it kept its own outcome record, and no other",
        );
      });
    } finally {
      removeHome(home);
    }
  });
});
