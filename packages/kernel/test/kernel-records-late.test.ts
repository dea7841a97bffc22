import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import { KernelRecords } from "../src/audit/kernel-records.js";
import type { AuditEntry, AuditLog } from "../src/audit/log.js";
import { MAX_LATE_RECORDS, recordLateRecords, StorageSpace } from "../src/kernel/storage-space.js";
import type { AuditRow } from "../src/store/types.js";

/** An audit log that refuses room while `full`, and keeps what it commits in order (the chain is not this test's). */
function fakeLog() {
  const committed: AuditRow[] = [];
  let seq = 0;
  const log = {
    full: false,
    committed,
    rowOf: (e: AuditEntry) =>
      ({ ...e, seq: 0, time: 0, message: e.message ?? null, detail: e.detail ?? null }) as unknown as AuditRow,
    get headSeq() {
      return seq;
    },
    append(e: AuditEntry): Promise<void> {
      return log.appendRow(log.rowOf(e));
    },
    appendRow(row: AuditRow): Promise<void> {
      row.time = Date.now();
      if (log.full) return Promise.reject(Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" }));
      row.seq = ++seq;
      committed.push(row);
      return Promise.resolve();
    },
  };
  return log;
}

describe("the kernel's own records while its storage is full (unit: the order of acts against a refusing log)", () => {
  it("an act that comes while older ones wait for room goes behind them: the record keeps the order they happened in", async () => {
    const log = fakeLog();
    const space = new StorageSpace(pino({ level: "silent" }));
    const records = new KernelRecords(log as unknown as AuditLog, space);
    const seen: [string, number][] = [];
    const act = (state: string) =>
      records.record({ op: "op.state", target: "op://1", detail: { state } }, (seq) => seen.push([state, seq]));

    log.full = true;
    act("running");
    await new Promise((r) => setImmediate(r));
    assert.equal(space.lateCount, 1, "kept for room");
    // Room again, but the condition's end is not on the record yet: the op ends meanwhile.
    log.full = false;
    act("succeeded");
    await new Promise((r) => setImmediate(r));
    assert.equal(log.committed.length, 0, "the later act waits behind the earlier one");
    assert.equal(space.lateCount, 2);

    await recordLateRecords(space, log as unknown as AuditLog);
    assert.deepEqual(
      log.committed.map((r) => JSON.parse(r.detail as string).state),
      ["running", "succeeded"],
    );
    for (const r of log.committed)
      assert.match(r.message ?? "", /^recorded late: the kernel's storage was full when this happened, at /);
    // Each is told the number it was committed under, once committed.
    assert.deepEqual(seen, [
      ["running", 1],
      ["succeeded", 2],
    ]);

    // Nothing waits now: the next act is appended at once, as itself.
    act("cancelled");
    await new Promise((r) => setImmediate(r));
    assert.equal(log.committed.at(-1)?.message, null);
    assert.deepEqual(seen.at(-1), ["cancelled", 3]);
  });

  it("one persona's many acts while the disk is full do not push out another's: each tree keeps its share, and what is dropped is on the record once there is room", async () => {
    const log = fakeLog();
    const space = new StorageSpace(pino({ level: "silent" }));
    const records = new KernelRecords(log as unknown as AuditLog, space);
    const act = (persona: string, n: number) =>
      records.record({ op: "op.state", target: `op://${persona}-${n}`, persona, detail: { n } });

    log.full = true;
    act("mallory/agent.a", 0);
    await new Promise((r) => setImmediate(r));
    // Mallory's tree (its agents' ends, its ops' ends) makes more acts than the kernel keeps...
    for (let i = 1; i < MAX_LATE_RECORDS + 500; i++) act(i % 2 ? "mallory" : "mallory/agent.a", i);
    // ...then alice's ops end, and the kernel's own acts come.
    for (let i = 0; i < 20; i++) act("alice", i);
    act("-", 0);
    assert.equal(space.lateCount, MAX_LATE_RECORDS, "no more than the bound is kept");

    log.full = false;
    await recordLateRecords(space, log as unknown as AuditLog);
    const by = (p: string) => log.committed.filter((r) => r.persona === p || r.persona.startsWith(`${p}/`));
    assert.equal(by("alice").length, 20, "every one of alice's acts is on the record");
    assert.equal(by("-").filter((r) => r.op === "op.state").length, 1, "and the kernel's");
    // Mallory's own acts, in the order they happened, from its first: only its newest were dropped.
    const mine = by("mallory").map((r) => JSON.parse(r.detail as string).n as number);
    assert.equal(mine.length, MAX_LATE_RECORDS - 21);
    assert.deepEqual(
      mine,
      mine.map((_, i) => i),
    );
    const u = log.committed.at(-1) as AuditRow;
    assert.equal(u.op, "kernel.unrecorded", "what was dropped is said on the record, after what was kept");
    assert.match(u.message ?? "", /^521 records were dropped while the kernel's storage was full/);
    assert.deepEqual(JSON.parse(u.detail as string).byPersona, { mallory: 521 });
    assert.equal(space.lateDropped, 521, "still counted for the stop");
    // Said once: the next flush has nothing to add.
    await recordLateRecords(space, log as unknown as AuditLog);
    assert.equal(log.committed.filter((r) => r.op === "kernel.unrecorded").length, 1);
  });
});
