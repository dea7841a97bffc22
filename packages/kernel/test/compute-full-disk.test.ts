import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { until } from "@kpip/protocol/testing";
import { pino } from "pino";
import { type CommandHost, ComputeEngine } from "../src/compute/engine.js";
import { DEFAULT_EVENT_LIMITS, EventBus } from "../src/events/bus.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { KeptBytes } from "../src/store/storage-full.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

/** ENOSPC, as a full file system refuses a write (what SQLite's own SQLITE_FULL is taken for too). */
const noRoom = () => Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });

/** A store in a home of its own whose op row updates are refused for room while `disk.full`. */
function fullableStore() {
  const home = mkdtempSync(join(tmpdir(), "kpip-compute-full-"));
  const store = new SqliteStore(join(home, "kernel.db"));
  const disk = { full: false };
  const updateOp = store.updateOp.bind(store);
  store.updateOp = (id, f) => {
    if (disk.full) throw noRoom();
    updateOp(id, f);
  };
  return { home, store, disk };
}

describe("ops on a full disk (unit: the disk's refusal at exactly an op's start and end cannot be timed from outside)", () => {
  it("an op that ends, and a queued one that starts, while the store has no room: no crash, each reads as it is, stored once there is room", async () => {
    const { home, store, disk } = fullableStore();
    const refused: unknown[] = [];
    const host = {
      sandbox: {},
      processes: {},
      hold: () => () => {},
      storageFull: (e: unknown) => refused.push(e),
    } as unknown as CommandHost;
    const engine = new ComputeEngine(
      store,
      new EventBus(DEFAULT_EVENT_LIMITS),
      {
        workers: 1,
        resultTtlMs: 60_000,
        maxFinishedPerPersona: 100,
        resultGraceMs: 60_000,
        maxOutputBytes: 1024,
        maxRuntimeMs: 60_000,
        maxPendingPerPersona: 10,
        maxPending: 10,
        maxTaskInputBytes: 1024,
        maxQueuedTaskInputBytes: 4096,
      },
      pino({ level: "silent" }),
      host,
    );
    engine.registerTask("gate", { module: TASKS, export: "gate" });
    const gate = join(home, "open");
    try {
      // One worker: the first op runs, the second waits for it.
      const first = engine.submit("alice", "s1", "task", "gate", gate, undefined);
      const second = engine.submit("alice", "s1", "task", "gate", `${gate}-never`, undefined);
      await until(() => store.getOp(first.id)?.state === "running", 30_000, "the first op running");
      assert.equal(store.getOp(second.id)?.state, "queued");

      disk.full = true;
      writeFileSync(gate, "");
      // The first ends and the second starts on the worker it freed; neither row could be written.
      await until(() => engine.current(store.getOp(first.id) ?? first).state === "succeeded", 30_000, "the first op's end");
      await until(() => engine.current(store.getOp(second.id) ?? second).state === "running", 30_000, "the second op's start");
      assert.equal(store.getOp(first.id)?.state, "running", "the store still has the row as it was");
      // As op.result reads it (a row without its result, the kept end over it): the result is there.
      const read = engine.current(store.getOp(first.id, false) as NonNullable<ReturnType<typeof store.getOp>>);
      assert.ok(read.result && read.result.byteLength > 0, "the kept end carries its result");
      assert.equal(engine.keptCount, 2);
      assert.ok(refused.length >= 2, "the full disk is reported, not logged as a failure");

      // Still no room: nothing lost.
      engine.storeKept();
      assert.equal(engine.keptCount, 2);
      disk.full = false;
      engine.storeKept();
      assert.equal(engine.keptCount, 0);
      assert.equal(store.getOp(first.id)?.state, "succeeded");
      assert.ok(store.getOp(first.id)?.result, "with its result");
      assert.equal(store.getOp(second.id)?.state, "running");
      assert.ok(existsSync(gate));
    } finally {
      await engine.stop();
      store.close();
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("ops that end one after another while the store has no room hold their results within their tree's share: past it an end is kept without its result, saying so", async () => {
    const { home, store, disk } = fullableStore();
    const host = { sandbox: {}, processes: {}, hold: () => () => {}, storageFull: () => {} } as unknown as CommandHost;
    // 1 MiB a tree, 4 MiB in all.
    const keptBytes = new KeptBytes(4 << 20, 1 << 20);
    const engine = new ComputeEngine(
      store,
      new EventBus(DEFAULT_EVENT_LIMITS),
      {
        workers: 1,
        resultTtlMs: 60_000,
        maxFinishedPerPersona: 100,
        resultGraceMs: 60_000,
        // A task's result is kept within 2 × maxOutputBytes: room for these results of N bytes.
        maxOutputBytes: 256 * 1024,
        maxRuntimeMs: 60_000,
        maxPendingPerPersona: 10,
        maxPending: 20,
        maxTaskInputBytes: 1024,
        maxQueuedTaskInputBytes: 4096,
        keptBytes,
      },
      pino({ level: "silent" }),
      host,
    );
    engine.registerTask("bytes", { module: TASKS, export: "bytes" });
    const N = 300_000;
    try {
      disk.full = true;
      // Mallory's small rows fit (a submit's), its ends' results do not: one op after another.
      const mallory = Array.from({ length: 6 }, () => engine.submit("mallory", "s1", "task", "bytes", N, undefined));
      const alice = engine.submit("alice", "s2", "task", "bytes", N, undefined);
      const read = (id: string) => engine.current(store.getOp(id) as NonNullable<ReturnType<typeof store.getOp>>);
      // Every op's end (tasks take the worker in turn by tree: alice's is not the last to run).
      await until(
        () => [...mallory, alice].every((o) => read(o.id).state !== "running" && read(o.id).state !== "queued"),
        30_000,
        "every op's end",
      );
      const ends = mallory.map((o) => read(o.id));
      assert.ok(
        ends.every((o) => o.state === "succeeded"),
        "each ended as it did",
      );
      const withResult = ends.filter((o) => o.result !== null);
      assert.equal(withResult.length, 3, "mallory's tree holds its share of results, no more");
      for (const o of ends.slice(3))
        assert.match(o.message ?? "", /^its result \(\d+ bytes\) was not kept: the kernel's storage was full/);
      assert.ok(read(alice.id).result, "another tree's end keeps its result: mallory's used only mallory's share");
      assert.ok(keptBytes.bytes <= 4 * (N + 16), "what is held is bounded");

      disk.full = false;
      engine.storeKept();
      assert.equal(engine.keptCount, 0);
      assert.equal(keptBytes.bytes, 0, "stored: nothing held any more");
      const stored = store.getOp(mallory[5]?.id as string);
      assert.equal(stored?.result, null);
      assert.match(stored?.message ?? "", /was not kept/, "the record says so");
      assert.equal(store.getOp(mallory[0]?.id as string)?.result?.byteLength !== undefined, true);
    } finally {
      await engine.stop();
      store.close();
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("ops that end while the store has no room count as results not yet read: a tree cannot have the kernel keep its ends in memory without bound", async () => {
    const { home, store, disk } = fullableStore();
    const host = { sandbox: {}, processes: {}, hold: () => () => {}, storageFull: () => {} } as unknown as CommandHost;
    const engine = new ComputeEngine(
      store,
      new EventBus(DEFAULT_EVENT_LIMITS),
      {
        workers: 1,
        resultTtlMs: 60_000,
        maxFinishedPerPersona: 5,
        resultGraceMs: 60_000,
        maxOutputBytes: 1024,
        maxRuntimeMs: 60_000,
        maxPendingPerPersona: 5,
        maxPending: 20,
        maxTaskInputBytes: 1024,
        maxQueuedTaskInputBytes: 4096,
      },
      pino({ level: "silent" }),
      host,
    );
    engine.registerTask("square", { module: TASKS, export: "square" });
    const read = (id: string) => engine.current(store.getOp(id) as NonNullable<ReturnType<typeof store.getOp>>);
    try {
      disk.full = true;
      // One op at a time, each ended before the next (a submit's row still fits, an end's does not).
      for (let i = 0; i < 5; i++) {
        const op = engine.submit("mallory", "s1", "task", "square", i, undefined);
        await until(() => read(op.id).state === "succeeded", 30_000, `op ${i}'s end`);
      }
      assert.equal(engine.keptCount, 5, "each end kept for room");
      assert.throws(
        () => engine.submit("mallory", "s1", "task", "square", 9, undefined),
        (e: Error & { errorClass?: string }) =>
          e.errorClass === "RESOURCE" &&
          /5 op results not yet read .*5 of them ended while the kernel's storage was full/.test(e.message),
      );
      // Another tree is not held back by mallory's.
      const other = engine.submit("alice", "s2", "task", "square", 3, undefined);
      await until(() => read(other.id).state === "succeeded", 30_000, "alice's op's end");
      // Stored: counted as the store counts them (unread within their grace) — the same bound.
      disk.full = false;
      engine.storeKept();
      assert.equal(engine.keptCount, 0);
      assert.throws(() => engine.submit("mallory", "s1", "task", "square", 9, undefined), /5 op results not yet read/);
    } finally {
      await engine.stop();
      store.close();
      rmSync(home, { recursive: true, force: true });
    }
  });
});
