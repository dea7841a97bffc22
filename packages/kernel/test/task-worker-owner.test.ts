import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import type { KernelOptions } from "../src/index.js";
import { type TestKernel, withTasks as withFixtureTasks } from "./harness.js";

/** `fn` on a kernel with one task worker (unless `opts` says) and the fixture tasks `tasks` (name: the export). */
const withTasks = (opts: KernelOptions, tasks: Record<string, string>, fn: (t: TestKernel) => Promise<void>) =>
  withFixtureTasks({ computeWorkers: 1, ...opts }, tasks, fn);

/** Persona `id` (a tree of its own) submitting tasks and following its ops, connected. */
async function tasker(t: TestKernel, id: string): Promise<KernelClient> {
  const p = await t.persona(id, [
    { ops: ["compute.submit"], targets: ["op://task/**"] },
    { ops: ["op.result", "op.status", "op.cancel"], targets: ["op://**"] },
  ]);
  return t.connect(p.identity, [p.token]);
}

const until = async (ok: () => boolean): Promise<void> => {
  while (!ok()) await new Promise((r) => setTimeout(r, 5));
};

/** Idle task workers the kernel ended for `reason` (its metrics). */
async function endedWorkers(t: TestKernel, reason: "evicted" | "spinning" | "aged"): Promise<number> {
  const m = await (t.k.metrics?.taskWorkersEnded.get() ?? Promise.resolve({ values: [] }));
  return m.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

describe("the shared task workers serve one persona at a time", () => {
  it("a persona's task never runs in a worker another persona's task ran in; its own next task reuses its worker", async () => {
    await withTasks({}, { thread: "thread" }, async (t) => {
      const alice = await tasker(t, "alice");
      const mallory = await tasker(t, "mallory");
      const first = await alice.ops.wait(await alice.compute.task("thread"));
      assert.equal(await alice.ops.wait(await alice.compute.task("thread")), first, "alice's stream keeps its worker");
      const theirs = await mallory.ops.wait(await mallory.compute.task("thread"));
      // The pool's one worker, alice's, took mallory's task as it was.
      assert.notEqual(theirs, first);
      assert.notEqual(await alice.ops.wait(await alice.compute.task("thread")), theirs);
    });
  });

  it("what a persona's task leaves in its worker's module scope or prototypes is not seen by another persona's task", async () => {
    // Two workers: a persona's later tasks find the one its earlier ones warmed.
    await withTasks({ computeWorkers: 2 }, { memoize: "memoize", mode: "mode" }, async (t) => {
      const alice = await tasker(t, "alice");
      const mallory = await tasker(t, "mallory");
      // alice's task caches her value by key in the embedder's module (a memo).
      assert.equal(await alice.ops.wait(await alice.compute.task("memoize", { put: ["report", "alice's secret"] })), null);
      // Given the idle worker alice's task had run on, mallory's task read it back: another persona's data.
      assert.equal(await mallory.ops.wait(await mallory.compute.task("memoize", { get: "report" })), null);
      // alice's own later tasks still find it: her worker is kept for her.
      assert.equal(await alice.ops.wait(await alice.compute.task("memoize", { get: "report" })), "alice's secret");
      // mallory's input steers the embedder's merge into Object.prototype...
      const polluted = await mallory.compute.task("mode", { constructor: { prototype: { mode: "mallory's" } } });
      assert.equal(await mallory.ops.wait(polluted), "mallory's");
      // ...and alice's next task, given the worker, answered mallory's value, not its own.
      assert.equal(await alice.ops.wait(await alice.compute.task("mode", {})), "default");
    });
  });

  it("a worker another persona's task left spinning does not take this persona's task: it runs, not failed at its deadline", async () => {
    await withTasks({}, { "late-spin": "lateSpin", square: "square" }, async (t) => {
      const mallory = await tasker(t, "mallory");
      const alice = await tasker(t, "alice");
      const trap = join(t.home, "trap");
      assert.equal(await mallory.ops.wait(await mallory.compute.task("late-spin", trap)), "armed");
      writeFileSync(trap, "");
      // mallory's task has returned; its timer now spins in the idle worker for ever.
      await until(() => existsSync(`${trap}.spinning`));
      // Given that worker, alice's task waited there until its deadline and failed RESOURCE.
      const mine = await alice.compute.task("square", 7, { timeoutMs: 60_000 });
      assert.equal(await alice.ops.wait(mine), 49);
    });
  });

  it("personas taking turns keep their own warm workers, computeIdleWorkers beyond computeWorkers; past that the idle worker used longest ago is ended", async () => {
    await withTasks({}, { thread: "thread" }, async (t) => {
      const alice = await tasker(t, "alice");
      const mallory = await tasker(t, "mallory");
      const a = await alice.ops.wait(await alice.compute.task("thread"));
      const m = await mallory.ops.wait(await mallory.compute.task("thread"));
      assert.notEqual(a, m);
      // One worker runs at a time; the other persona's waits idle, warm, for its next turn.
      assert.equal(await alice.ops.wait(await alice.compute.task("thread")), a);
      assert.equal(await mallory.ops.wait(await mallory.compute.task("thread")), m);
      assert.equal(await endedWorkers(t, "evicted"), 0);
    });
    await withTasks({ computeIdleWorkers: 0 }, { thread: "thread" }, async (t) => {
      const alice = await tasker(t, "alice");
      const mallory = await tasker(t, "mallory");
      const a = await alice.ops.wait(await alice.compute.task("thread"));
      await mallory.ops.wait(await mallory.compute.task("thread"));
      assert.notEqual(
        await alice.ops.wait(await alice.compute.task("thread")),
        a,
        "no idle worker kept: alice's was ended for mallory's",
      );
      assert.equal(await endedWorkers(t, "evicted"), 2);
    });
  });

  it("a persona tree taking turns under several persona ids ends its own idle workers for new ones, not another tree's warm worker", async () => {
    await withTasks({}, { memoize: "memoize", thread: "thread" }, async (t) => {
      const alice = await tasker(t, "alice");
      // One tree, three persona ids (sub-personas it registers, or its agents): each id a worker of its own.
      const mallories = [await tasker(t, "mallory"), await tasker(t, "mallory/b"), await tasker(t, "mallory/c")];
      assert.equal(await alice.ops.wait(await alice.compute.task("memoize", { put: ["report", "alice's"] })), null);
      const a = await alice.ops.wait(await alice.compute.task("thread"));
      // One running and two idle kept (computeWorkers 1, computeIdleWorkers 2): each new id of mallory's
      // ended the idle worker used longest ago, whoever's — alice's first of all.
      for (let round = 0; round < 2; round++) for (const m of mallories) await m.ops.wait(await m.compute.task("thread"));
      assert.equal(await alice.ops.wait(await alice.compute.task("thread")), a, "alice's warm worker is still hers");
      assert.equal(await alice.ops.wait(await alice.compute.task("memoize", { get: "report" })), "alice's");
    });
  });

  it("an idle worker its persona's leftover keeps busy is ended at the housekeeping tick: the persona's next task runs on a new one", async () => {
    await withTasks({ heartbeatMs: 200 }, { "late-spin": "lateSpin", square: "square" }, async (t) => {
      const mallory = await tasker(t, "mallory");
      const trap = join(t.home, "trap");
      assert.equal(await mallory.ops.wait(await mallory.compute.task("late-spin", trap)), "armed");
      writeFileSync(trap, "");
      // Its task returned; its timer now spins in mallory's idle worker, outside any deadline, for ever.
      await until(() => existsSync(`${trap}.spinning`));
      // Two ticks (200 ms heartbeat: one each 100 ms) see it; a minute is room for a busy machine.
      const giveUp = Date.now() + 60_000;
      while ((await endedWorkers(t, "spinning")) === 0 && Date.now() < giveUp) await new Promise((r) => setTimeout(r, 20));
      assert.equal(await endedWorkers(t, "spinning"), 1);
      // Given the spinning worker (her own), her task waited there until its deadline.
      assert.equal(await mallory.ops.wait(await mallory.compute.task("square", 7, { timeoutMs: 60_000 })), 49);
    });
  });

  it("an idle worker its persona's leftover keeps busy under half the time (30 ms of every 100) is ended too: its busy time while idle is bounded", async () => {
    // Ticks each second: each sees the leftover busy ~0.3 of the time, under the rule's half.
    await withTasks({ heartbeatMs: 2000 }, { "late-duty": "lateDuty", square: "square" }, async (t) => {
      const mallory = await tasker(t, "mallory");
      const trap = join(t.home, "trap");
      const armed = await mallory.compute.task("late-duty", { path: trap, busy: 30, period: 100 });
      assert.equal(await mallory.ops.wait(armed), "armed");
      writeFileSync(trap, "");
      await until(() => existsSync(`${trap}.duty`));
      // ~0.3 of a core for ever: each tick saw it busy less than half the time, so it was never ended.
      const giveUp = Date.now() + 60_000;
      while ((await endedWorkers(t, "spinning")) === 0 && Date.now() < giveUp) await new Promise((r) => setTimeout(r, 20));
      assert.equal(await endedWorkers(t, "spinning"), 1);
      assert.equal(await mallory.ops.wait(await mallory.compute.task("square", 7, { timeoutMs: 60_000 })), 49);
    });
  });

  it("a leftover that keeps its idle worker busy between its persona's tasks, each sooner than two ticks, is ended when the next task comes", async () => {
    // No housekeeping tick in the test's time: the persona's tasks come more often than the ticks that
    // would judge its idle worker (two idle ticks in a row; by default 2.5 s apart).
    const quiet = { heartbeatMs: 600_000, handshakeTimeoutMs: 600_000 };
    await withTasks(quiet, { "late-duty": "lateDuty", thread: "thread" }, async (t) => {
      const mallory = await tasker(t, "mallory");
      const trap = join(t.home, "trap");
      const first = await mallory.ops.wait(await mallory.compute.task("thread"));
      // Its leftover, busy 90 ms of every 100 and yielding between, so its persona's next tasks still
      // run there; armed already, it starts within a period of the task's end, whatever this process's pace.
      writeFileSync(trap, "");
      // The worker's idle time is judged from the armed task's end, which comes after this.
      const submitted = performance.now();
      const armed = await mallory.compute.task("late-duty", { path: trap, busy: 90, period: 100 });
      assert.equal(await mallory.ops.wait(armed), "armed");
      // Busy since past the rule's bounds (over half the time since the task's end, 250 ms at least),
      // by what the leftover counts: a wait on it, not on this machine's pace.
      const busyMs = () => (existsSync(`${trap}.duty`) ? Number(readFileSync(`${trap}.duty`, "utf8")) : 0);
      await until(() => busyMs() >= 500 && busyMs() > 0.6 * (performance.now() - submitted));
      // Each task reset what its idle time was judged by: a task a tick kept it burning a core for ever.
      assert.notEqual(await mallory.ops.wait(await mallory.compute.task("thread")), first, "a new worker took the task");
      assert.equal(await endedWorkers(t, "spinning"), 1);
    });
  });

  it("a task its input steers to hoard memory fails RESOURCE at computeWorkerHeapMb: its worker ends, not the kernel, and the next tasks run", async () => {
    await withTasks({ computeWorkerHeapMb: 32 }, { hoard: "hoard", square: "square" }, async (t) => {
      const mallory = await tasker(t, "mallory");
      const alice = await tasker(t, "alice");
      // ~160 MiB of the worker's heap: past its 32 (without the bound, V8's own: ~4 GiB here).
      const big = await mallory.compute.task("hoard", 160);
      await assert.rejects(mallory.ops.wait(big), (e: Error & { errorClass?: string }) => {
        assert.equal(e.errorClass, "RESOURCE");
        assert.match(e.message, /out of memory \(computeWorkerHeapMb 32\)/);
        return true;
      });
      assert.equal(await mallory.ops.wait(await mallory.compute.task("square", 6)), 36);
      assert.equal(await alice.ops.wait(await alice.compute.task("square", 7)), 49);
      assert.equal(await mallory.ops.wait(await mallory.compute.task("hoard", 4)), 4 * 450, "a task within the bound runs");
    });
  });

  it("a task that runs out of memory on a reused worker fails RESOURCE at once: it is not run again to fill a second worker's heap", async () => {
    await withTasks({ computeWorkerHeapMb: 32 }, { "hoard-noted": "hoardNoted", square: "square" }, async (t) => {
      const mallory = await tasker(t, "mallory");
      // Her worker has run a task: an end there may be an earlier task's doing, which is run again once.
      assert.equal(await mallory.ops.wait(await mallory.compute.task("square", 6)), 36);
      const runs = join(t.home, "runs");
      const big = await mallory.compute.task("hoard-noted", { path: runs, mb: 160 });
      await assert.rejects(mallory.ops.wait(big), (e: Error & { errorClass?: string }) => {
        assert.equal(e.errorClass, "RESOURCE");
        assert.match(e.message, /out of memory \(computeWorkerHeapMb 32\)/);
        return true;
      });
      assert.equal(readFileSync(runs, "utf8"), "run\n", "run once: out of memory is the task's own end");
      assert.equal(await mallory.ops.wait(await mallory.compute.task("square", 7)), 49);
    });
  });

  it("an idle worker idle past computeIdleWorkerMs is ended at the housekeeping tick (reason aged): the persona's next task runs on a new one", async () => {
    await withTasks({ heartbeatMs: 200, computeIdleWorkerMs: 1 }, { thread: "thread" }, async (t) => {
      const alice = await tasker(t, "alice");
      const first = await alice.ops.wait(await alice.compute.task("thread"));
      // The next tick (each 100 ms) ends it; a minute is room for a busy machine.
      const giveUp = Date.now() + 60_000;
      while ((await endedWorkers(t, "aged")) === 0 && Date.now() < giveUp) await new Promise((r) => setTimeout(r, 20));
      assert.equal(await endedWorkers(t, "aged"), 1);
      assert.notEqual(await alice.ops.wait(await alice.compute.task("thread")), first, "a new worker");
    });
  });

  it("a task's end is on the record before the start of the queued task its worker takes next", async () => {
    await withTasks({}, { gate: "gate", square: "square" }, async (t) => {
      const alice = await tasker(t, "alice");
      const gatePath = join(t.home, "gate");
      const a = await alice.compute.task("gate", gatePath);
      const b = await alice.compute.task("square", 5);
      // One worker: b waits behind a, and starts when a's result comes.
      writeFileSync(gatePath, "");
      assert.equal(await alice.ops.wait(b), 25);
      const rows = t.k.inspect.queryAudit({ op: "op.state", limit: 100 });
      const seqOf = (op: string, state: string) =>
        rows.find((r) => r.target === `op://${op}` && r.detail?.includes(`"state":"${state}"`))?.seq;
      const aEnd = seqOf(a.id, "succeeded");
      const bStart = seqOf(b.id, "running");
      assert.ok(aEnd !== undefined && bStart !== undefined, JSON.stringify(rows.map((r) => [r.target, r.detail])));
      assert.ok(aEnd < bStart, `a's end (${aEnd}) before b's start (${bStart})`);
    });
  });

  it("a persona id removed and registered again for another holder is not given the worker the earlier holder's tasks ran in", async () => {
    await withTasks({}, { memoize: "memoize" }, async (t) => {
      // The tree's owner hands a worker name to one holder, removes it, and gives the name to another.
      const work = [
        { ops: ["compute.submit"], targets: ["op://task/**"] },
        { ops: ["op.result", "op.status"], targets: ["op://**"] },
      ];
      const owner = await t.persona("oli", [
        { ops: ["persona.*", "token.*"], targets: ["persona://oli/**", "token://**", "kernel://"] },
        ...work,
      ]);
      const o = await t.connect(owner.identity, [owner.token]);
      const holder = async () => {
        const id = generateIdentity("oli/w");
        await o.call("persona.register", "persona://oli/w", { publicKey: id.publicKey });
        return t.connect(id, [(await o.tokens.mint("oli/w", { rights: work, ttlMs: 600_000 })).token]);
      };
      const first = await holder();
      await first.ops.wait(await first.compute.task("memoize", { put: ["notes", "the first holder's"] }));
      await o.call("persona.remove", "persona://oli/w");
      const second = await holder();
      // The idle worker, the first holder's, took the second's task: the same persona id.
      assert.equal(await second.ops.wait(await second.compute.task("memoize", { get: "notes" })), null);
    });
  });
});
