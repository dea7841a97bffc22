import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import { KernelRecords } from "../src/audit/kernel-records.js";
import type { AuditEntry, AuditLog } from "../src/audit/log.js";
import { recordLateRecords, StorageSpace } from "../src/kernel/storage-space.js";
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
});
