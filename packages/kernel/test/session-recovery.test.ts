import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import type { Identity } from "@kpip/protocol";
import { RECOVERED_SESSION_MESSAGE, recoverSessions, settleLiveSessions } from "../src/audit/live-sessions.js";
import { AuditLog } from "../src/audit/log.js";
import { type AuditRecord, Kernel, openAuditReader, SqliteStore } from "../src/index.js";
import type { AuditRow } from "../src/store/types.js";
import { removeHome, spawnReady, startKernel } from "./harness.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;
const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/**
 * A kernel in a child process on `home` that SIGKILLs itself as its audit log commits a batch
 * holding a `session.close`: `close-after:<persona>` just after a close of that persona's committed
 * (its session's row not yet dropped); `recovered-before` / `recovered-after` just before or after
 * the start's own commit of the session ends it recovered. Resolves once it serves (never, for
 * the recovered-… ones: they die while starting).
 */
async function dyingKernel(home: string, die: string) {
  const code = `const { Kernel, SqliteStore } = await import(process.argv[1]);
const die = process.argv[3];
const append = SqliteStore.prototype.appendAudit;
SqliteStore.prototype.appendAudit = function (rows, ...rest) {
  const close = (r) => r.op === "session.close" && (die === "close-after:" + r.persona || (die.startsWith("recovered") && r.message?.startsWith("recorded at the next start")));
  const hit = rows.some(close);
  if (hit && die === "recovered-before") process.kill(process.pid, "SIGKILL");
  const v = append.call(this, rows, ...rest);
  if (hit) process.kill(process.pid, "SIGKILL");
  return v;
};
const k = new Kernel({ home: process.argv[2], logLevel: "silent" });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
  return spawnReady(["--input-type=module", "-e", code, kernelModule, home, die], "ready");
}

/** Runs a kernel that must die at start (recovered-…) to its end. */
async function dyingStart(home: string, die: "recovered-before" | "recovered-after"): Promise<void> {
  let child: Awaited<ReturnType<typeof dyingKernel>>;
  try {
    child = await dyingKernel(home, die);
  } catch (e) {
    assert.match((e as Error).message, /SIGKILL/, "it died at the commit of the ends");
    return;
  }
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
  assert.fail("the kernel served without writing an end for the sessions left open");
}

/** Every record of the home, read as `kpip audit` does (a private copy when no kernel holds it). */
function records(home: string): AuditRecord[] {
  const r = openAuditReader(join(home, "kernel.db"));
  try {
    return [...r.records()];
  } finally {
    r.close();
  }
}

const isOpen = (r: Pick<AuditRow, "op">) => r.op === "session.open";
const isClose = (r: Pick<AuditRow, "op">) => r.op === "session.close" || r.op === "session.error";
const isRecovered = (r: Pick<AuditRow, "message">) => r.message?.startsWith(RECOVERED_SESSION_MESSAGE) === true;

/**
 * Registers alice, carol and dave (a clean run), then in a kernel process that dies as carol's
 * session.close commits: alice's sessions A and B stay open, dave's D closes properly before,
 * carol's C closes (the kill). Returns the home and the session ids by name.
 */
async function killedWithSessionsOpen(): Promise<{ home: string; ids: Record<"A" | "B" | "C" | "D", string>; token: string }> {
  const t = await startKernel();
  const home = t.home;
  const rights = [{ ops: ["storage.*"], targets: ["obj://x/**"] }];
  const alice = await t.persona("alice", rights);
  const carol = await t.persona("carol", rights);
  const dave = await t.persona("dave", rights);
  await t.stop();
  const child = await dyingKernel(home, "close-after:carol");
  const exited = new Promise((r) => child.once("exit", r));
  const socket = new Kernel({ home, logLevel: "silent" }).socketPath;
  const clients: KernelClient[] = [];
  const connect = async (identity: Identity, token: Uint8Array) => {
    const c = await KernelClient.connect({ socket, identity, tokens: [token], reconnect: false });
    clients.push(c);
    return c;
  };
  try {
    await connect(alice.identity, alice.token);
    await connect(alice.identity, alice.token);
    const d = await connect(dave.identity, dave.token);
    await d.close();
    const c = await connect(carol.identity, carol.token);
    await c.close();
    await exited;
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
    for (const c of clients) await c.close().catch(() => {});
  }
  assert.equal(child.signalCode, "SIGKILL", "the kernel died at carol's close");
  const opens = records(home).filter(isOpen);
  const of = (persona: string) => opens.filter((r) => r.persona === persona).map((r) => r.session);
  const [A, B] = of("alice") as [string, string];
  const [C] = of("carol") as [string];
  const [D] = of("dave") as [string];
  assert.ok(A && B && C && D, "the four sessions opened on the record");
  const ended = records(home).filter((r) => isClose(r) && [A, B, C, D].includes(r.session));
  assert.deepEqual(
    ended.map((r) => r.session).sort(),
    [C, D].sort(),
    "C and D ended on the record before the kill; A and B did not",
  );
  return { home, ids: { A, B, C, D }, token: alice.id };
}

/** The session ends on the record, by session id. */
function endsBySession(home: string): Map<string, AuditRecord[]> {
  const m = new Map<string, AuditRecord[]>();
  for (const r of records(home).filter(isClose)) m.set(r.session, [...(m.get(r.session) ?? []), r]);
  return m;
}

describe("sessions open when the kernel is killed", () => {
  it("get exactly one session.close at the next start (the open record's persona and token, FAILURE INTERNAL, when the run's last record was); sessions closed before get none; a second start adds none; kpip audit timeline shows them ended", async () => {
    const { home, ids, token } = await killedWithSessionsOpen();
    try {
      const last = records(home).at(-1) as AuditRecord;
      const t = await startKernel({}, home);
      await t.stop();
      const ends = endsBySession(home);
      for (const s of [ids.A, ids.B]) {
        const e = ends.get(s) ?? [];
        assert.equal(e.length, 1, `session ${s} has one end`);
        const r = e[0] as AuditRecord;
        assert.ok(isRecovered(r), r.message ?? "");
        assert.equal(r.op, "session.close");
        assert.equal(r.phase, "session");
        assert.equal(r.persona, "alice");
        assert.equal(r.status, "FAILURE");
        assert.equal(r.errorClass, "INTERNAL");
        assert.match(r.caps ?? "", new RegExp(`:${token}$`), "the token the session bound, as its open record names it");
        assert.match(r.message ?? "", /killed or crashed/);
        const detail = JSON.parse(r.detail ?? "{}");
        assert.equal(detail.recovered, true);
        assert.deepEqual(detail.last, { seq: last.seq, time: last.time });
        const open = records(home).find((x) => isOpen(x) && x.session === s) as AuditRecord;
        assert.equal(detail.open, open.seq);
      }
      for (const s of [ids.C, ids.D]) {
        const e = ends.get(s) ?? [];
        assert.equal(e.length, 1, `session ${s} closed properly has only its own end`);
        assert.ok(!isRecovered(e[0] as AuditRecord));
      }
      // A second start (after a clean stop) adds no end.
      const again = await startKernel({}, home);
      await again.stop();
      assert.equal(records(home).filter(isRecovered).length, 2);

      const r = spawnSync(process.execPath, [MAIN, "audit", "timeline", "--home", home, "--json", "--persona", "alice"], {
        encoding: "utf8",
      });
      assert.equal(r.status, 0, r.stderr);
      const rows = r.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { session: string; op: string; status: string; end: string | null });
      for (const s of [ids.A, ids.B]) {
        const mine = rows.filter((x) => x.session === s).map((x) => `${x.op} ${x.status}`);
        assert.deepEqual(mine, ["session.open SUCCESS", "session.close FAILURE"], `the timeline shows session ${s} ended`);
      }
    } finally {
      removeHome(home);
    }
  });

  it("a start killed while writing those ends, before or after their commit, leaves the next start to write each exactly once", async () => {
    const { home, ids } = await killedWithSessionsOpen();
    try {
      // Killed before its commit: no end on the record yet.
      await dyingStart(home, "recovered-before");
      assert.equal(records(home).filter(isRecovered).length, 0);
      // Killed just after it: the ends are on the record, the rows still there.
      await dyingStart(home, "recovered-after");
      assert.deepEqual(
        records(home)
          .filter(isRecovered)
          .map((r) => r.session)
          .sort(),
        [ids.A, ids.B].sort(),
      );
      const t = await startKernel({}, home);
      await t.stop();
      const ends = endsBySession(home);
      for (const s of Object.values(ids)) assert.equal(ends.get(s)?.length, 1, `session ${s} has exactly one end`);
      assert.equal(records(home).filter(isRecovered).length, 2);
    } finally {
      removeHome(home);
    }
  });

  it("a commit that fails while a start writes those ends (more of them than a batch) leaves each failed one for the next start, never taken as ended by another's record", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-live-"));
    const store = new SqliteStore(join(home, "kernel.db"));
    try {
      const sessions = ["s1", "s2", "s3", "s4", "s5"];
      // Five sessions a killed run left open (their open records pruned since: the rows alone matter here).
      for (const session of sessions) store.liveSessionOpened({ session, persona: "alice", caps: null, openSeq: 0 });
      // Two records a commit: the first commit (s1, s2) is refused, the later ones go through.
      const audit = new AuditLog(store, "k", generateKeyPairSync("ed25519").privateKey, { batchMax: 2, checkpointEvery: 10_000 });
      const append = store.appendAudit.bind(store);
      let commits = 0;
      store.appendAudit = (...a: Parameters<SqliteStore["appendAudit"]>) => {
        if (commits++ === 0) throw Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
        append(...a);
      };
      const first = await recoverSessions(store, audit, undefined);
      assert.deepEqual(first, { recorded: 3, failed: 2 });
      // The next start: what the rows noted past the log's last record never committed.
      settleLiveSessions(store, audit.headSeq);
      const second = await recoverSessions(store, audit, undefined);
      assert.deepEqual(second, { recorded: 2, failed: 0 }, "the two whose end failed get it now");
      const ends = store.scanAudit(1, 100).filter((r) => r.op === "session.close");
      assert.deepEqual(ends.map((r) => r.session).sort(), sessions, "each session has exactly one end on the record");
      assert.deepEqual(store.liveSessions(), []);
    } finally {
      store.close();
      removeHome(home);
    }
  });
});
