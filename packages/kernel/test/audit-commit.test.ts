import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadIdentity } from "@kpip/client";
import { encodeIntent } from "@kpip/protocol";
import fc from "fast-check";
import { Kernel, openAuditReader, SqliteStore, verifyAudit } from "../src/index.js";
import { ROWS_PER_INSERT } from "../src/store/sqlite/audit-append.js";
import type { AuditCheckpoint, AuditRow, DedupeRow } from "../src/store/types.js";
import { removeHome, spawnReady, startKernel, until } from "./harness.js";
import { RawPeer } from "./wire.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/** A row as the log hands it over: seq, hash and the record's bytes (the store keeps only those). */
const row = (seq: number): AuditRow =>
  ({ seq, hash: randomBytes(32), record: randomBytes(40 + (seq % 300)) }) as unknown as AuditRow;

const stored = (s: SqliteStore) => s.db.prepare("SELECT seq, hash, record FROM audit ORDER BY seq").raw(true).all();

/** What the multi-row append replaced, and must store the same as: one INSERT per record, one transaction. */
function referenceAppend(s: SqliteStore, rows: AuditRow[], dedupe: DedupeRow[], journalUpTo: number, cps: AuditCheckpoint[]) {
  const ins = s.db.prepare("INSERT INTO audit (seq, hash, record) VALUES (?, ?, ?)");
  s.transaction(() => {
    for (const r of rows) ins.run(r.seq, r.hash, r.record);
    for (const d of dedupe) s.putDedupe(d);
    if (journalUpTo > 0) s.db.prepare("DELETE FROM offline_journal WHERE id <= ?").run(journalUpTo);
    for (const c of cps) s.addCheckpoint(c);
  });
}

const checkpoint = (seq: number): AuditCheckpoint => ({
  seq,
  hash: randomBytes(32),
  time: 1,
  kernel: "k",
  publicKey: randomBytes(32),
  signature: randomBytes(64),
});

describe("the audit commit (multi-row INSERT, a lone statement when it is only rows)", () => {
  it("stores exactly what one INSERT per record in one transaction stored, for any batch size and mix", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-append-"));
    try {
      let n = 0;
      fc.assert(
        fc.property(
          fc.array(fc.oneof(fc.nat(3), fc.nat(ROWS_PER_INSERT + 2), fc.nat(3 * ROWS_PER_INSERT + 5)), {
            minLength: 1,
            maxLength: 6,
          }),
          fc.boolean(),
          fc.boolean(),
          (sizes, withDedupe, withCheckpoint) => {
            const a = new SqliteStore(join(dir, `a${n}.db`));
            const b = new SqliteStore(join(dir, `b${n++}.db`));
            try {
              let seq = 0;
              for (const size of sizes) {
                const rows = Array.from({ length: size }, () => row(++seq));
                const dedupe =
                  withDedupe && size % 2
                    ? [{ key: `k${seq}`, hash: randomBytes(32), response: randomBytes(9), expires: seq }]
                    : [];
                const cps = withCheckpoint && size > 0 ? [checkpoint(seq)] : [];
                a.appendAudit(rows, dedupe, 0, cps);
                referenceAppend(b, rows, dedupe, 0, cps);
              }
              assert.deepEqual(stored(a), stored(b));
              assert.equal(a.countAudit(), seq);
              assert.deepEqual(a.checkpoints(), b.checkpoints());
              assert.deepEqual(a.lookupDedupe(`k${seq}`, 0), b.lookupDedupe(`k${seq}`, 0));
              assert.equal(a.db.inTransaction, false);
            } finally {
              a.close();
              b.close();
            }
          },
        ),
        { numRuns: 40 },
      );
    } finally {
      removeHome(dir);
    }
  });

  it("a commit that fails stores none of its rows, whether it is one statement or several, and leaves no transaction open", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-append-"));
    const s = new SqliteStore(join(dir, "k.db"));
    try {
      s.appendAudit([row(1), row(2)]);
      // A lone statement (rows only, at most ROWS_PER_INSERT) whose last row collides with seq 2.
      assert.throws(() => s.appendAudit([row(3), row(4), row(2)]), /UNIQUE|PRIMARY KEY/);
      // Several statements in a transaction, the collision in the last one.
      const many = Array.from({ length: 2 * ROWS_PER_INSERT + 3 }, (_, i) => row(3 + i));
      many[many.length - 1] = row(1);
      assert.throws(() => s.appendAudit(many), /UNIQUE|PRIMARY KEY/);
      // Rows with a dedupe answer: the transaction path, the collision in the rows.
      const d = { key: "x", hash: randomBytes(32), response: randomBytes(3), expires: 9 };
      assert.throws(() => s.appendAudit([row(3), row(1)], [d]), /UNIQUE|PRIMARY KEY/);
      assert.equal(s.db.inTransaction, false);
      assert.deepEqual(
        stored(s).map((r) => (r as unknown[])[0]),
        [1, 2],
      );
      assert.equal(s.lookupDedupe("x", 0), undefined);
      // The store takes the next commit as usual.
      s.appendAudit([row(3)]);
      assert.equal(s.countAudit(), 3);
    } finally {
      s.close();
      removeHome(dir);
    }
  });

  it("a start finds the answers committed with effects by walking the newest dedupe rows, each written with where the log was, down to the window and no further", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-append-"));
    const s = new SqliteStore(join(dir, "k.db"));
    try {
      const effect = (key: string, intentSeq: number, afterSeq: number): DedupeRow => ({
        key,
        hash: randomBytes(32),
        response: randomBytes(5),
        expires: 9e15,
        intentSeq,
        afterSeq,
      });
      const kept = (key: string): DedupeRow => ({ key, hash: randomBytes(32), response: randomBytes(5), expires: 9e15 });
      s.putDedupe(effect("beneath", 100_001, 100_040));
      // An older kpip's rows: an effect's answer it cleared and one kept with its outcome record (no after_seq).
      s.db
        .prepare(
          "INSERT INTO dedupe (key, hash, response, expires) VALUES ('old-cleared', x'00', x'00', 9e15), ('old-kept', x'00', x'00', 9e15)",
        )
        .run();
      s.putDedupe(effect("far", 10, 12));
      s.appendAudit([row(1), row(2)]);
      // Answers kept with their outcome records: positioned at the last record of their commit.
      s.appendAudit([row(99_990), row(99_995)], [kept("kept-a")]);
      s.putDedupe(effect("a", 100_000, 100_010));
      s.appendAudit([row(100_011)], [kept("kept-b"), kept("kept-c")]);
      s.putDedupe(effect("b", 100_020, 100_030));
      s.putDedupe(effect("c", 100_025, 100_030));
      const position = (key: string) => s.db.prepare("SELECT after_seq FROM dedupe WHERE key = ?").pluck().get(key);
      assert.deepEqual(["kept-a", "kept-b", "kept-c", "old-kept"].map(position), [99_995, 100_011, 100_011, null]);
      // No index: the effects' rows are found by the walk (and not one row of the table is updated
      // when their outcome records commit: a, b and c still name their intents).
      const indexes = s.db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'dedupe'").pluck().all();
      assert.deepEqual(indexes, ["sqlite_autoindex_dedupe_1"]);
      const found = (since: number) => s.effectAnswersSince(since).map((e) => [e.key, e.intentSeq, e.afterSeq]);
      assert.deepEqual(found(100_000), [
        ["c", 100_025, 100_030],
        ["b", 100_020, 100_030],
        ["a", 100_000, 100_010],
      ]);
      assert.deepEqual(found(100_015), [
        ["c", 100_025, 100_030],
        ["b", 100_020, 100_030],
      ]);
      // The walk stops at the first row named far enough below the window ("far", 12 < 100,000 -
      // 65,536): a row under it is not read, whatever it says ("beneath" was written first).
      assert.deepEqual(found(0), [
        ["beneath", 100_001, 100_040],
        ["c", 100_025, 100_030],
        ["b", 100_020, 100_030],
        ["a", 100_000, 100_010],
        ["far", 10, 12],
      ]);
      s.effectAnswersRecorded(["far"]);
      assert.deepEqual(
        found(0).map(([k]) => k),
        ["beneath", "c", "b", "a"],
        "a row the start recorded names its intent no more",
      );
    } finally {
      s.close();
      removeHome(dir);
    }
  });

  /**
   * A kernel in a child process that SIGKILLs itself right after the socket write that carries
   * its `killAt`-th RESPONSE frame: the peer has those answers, the kernel ran nothing after.
   */
  async function kernelDyingAfterAnswers(home: string, killAt: number): Promise<ChildProcess> {
    const code = `const { Kernel } = await import(process.argv[1]);
const net = await import("node:net");
const killAt = Number(process.argv[3]);
let answered = 0;
const write = net.Socket.prototype.write;
net.Socket.prototype.write = function (chunk, ...rest) {
  const r = write.call(this, chunk, ...rest);
  if (!(chunk instanceof Uint8Array)) return r;
  const b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  for (let at = 0; at + 16 <= b.length; at += 16 + b.readUInt32BE(at + 12)) if (b[at + 3] === 6) answered++;
  if (answered >= killAt) process.kill(process.pid, "SIGKILL");
  return r;
};
const k = new Kernel({ home: process.argv[2], logLevel: "silent" });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
    return spawnReady(["--input-type=module", "-e", code, kernelModule, home, String(killAt)], "ready");
  }

  /** Requests answered by a kernel killed right after answering, each found committed with its intent. */
  async function answeredThenKilled(inFlight: number, killAt: number): Promise<number> {
    const home = mkdtempSync(join(tmpdir(), "kpip-commit-"));
    let child: ChildProcess | undefined;
    try {
      child = await kernelDyingAfterAnswers(home, killAt);
      const exited = new Promise((r) => child?.once("exit", r));
      const identity = loadIdentity(join(home, "admin.identity"));
      const token = Buffer.from(readFileSync(join(home, "admin.token"), "utf8").trim(), "base64url");
      const peer = await RawPeer.connect(new Kernel({ home, logLevel: "silent" }).socketPath);
      await peer.handshake(identity, [token]);
      const intent = encodeIntent({ op: "system.health", target: "kernel://", args: {} });
      const answered = new Set<number>();
      let next = 1;
      const send = () => peer.request(next++, intent, { persona: identity.persona });
      for (let i = 0; i < inFlight; i++) send();
      // One request sent per answer, so `inFlight` stay in flight until the kill.
      await until(
        () => {
          for (const f of peer.frames.splice(0)) {
            if (f.msg.type !== "RESPONSE") continue;
            const body = f.msg.body as { id: number; status: string };
            assert.equal(body.status, "SUCCESS");
            answered.add(body.id);
            send();
          }
          return peer.closed;
        },
        30_000,
        "the kernel to die after its answers",
      );
      await exited;
      assert.ok(answered.size >= killAt, `${answered.size} answers before the kill`);
      // A read-only op's request is one "complete" record (intent and outcome in one), its status the answer's.
      const answeredIn = (records: Iterable<AuditRow>) => {
        const done = new Set<number>();
        for (const r of records)
          if (r.op === "system.health" && r.requestId !== null && r.phase === "complete" && r.status === "SUCCESS")
            done.add(r.requestId);
        return done;
      };
      // The records of the last answers were in the audit journal only: the kernel answers once a
      // batch is journalled and moves it into SQLite on a later turn (store/audit-journal.ts).
      const sqlite = new SqliteStore(join(home, "kernel.db"));
      const indexed = sqlite.lastAudit()?.seq ?? 0;
      sqlite.close();
      // The stopped home as the audit tools read it (its journal included), without changing it...
      const reader = openAuditReader(join(home, "kernel.db"));
      try {
        assert.ok((reader.headSeq() ?? 0) > indexed, "the journal held records SQLite had not indexed");
        assert.equal(verifyAudit(reader).ok, true);
        const done = answeredIn(reader.records());
        for (const id of answered) assert.ok(done.has(id), `request ${id} was answered but the audit reader lacks its record`);
      } finally {
        reader.close();
      }
      // ...and as the next kernel on the home has it (the journal indexed at start).
      const t = await startKernel({}, home);
      try {
        assert.equal(verifyAudit(t.k.inspect).ok, true);
        const done = answeredIn(t.k.inspect.queryAudit({ op: "system.health", limit: 100_000 }));
        for (const id of answered) assert.ok(done.has(id), `request ${id} was answered but its record is not in the store`);
      } finally {
        await t.stop();
      }
      return answered.size;
    } finally {
      if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      removeHome(home);
    }
  }

  it("a kernel killed right after answering one request at a time loses none of the answered records", async () => {
    assert.ok((await answeredThenKilled(1, 25)) >= 25);
  });

  it("a kernel killed right after answering a turn of many requests (batched commits) loses none of their records", async () => {
    assert.ok((await answeredThenKilled(300, 700)) >= 700);
  });
});
