import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { type CallFn, type KernelClient, OpsApi } from "@kpip/client";
import Database from "better-sqlite3";
import { MAX_AUDIT_BATCH } from "../src/config.js";
import { ConfigError, HOME_FILES, resolveConfig } from "../src/index.js";
import { klass, type TestKernel, withTasks } from "./harness.js";

/** Two personas of trees of their own, mallory and alice, each submitting tasks and following and cancelling its ops, connected. */
async function rivals(t: TestKernel): Promise<{ mallory: KernelClient; alice: KernelClient }> {
  const rights = [
    { ops: ["compute.submit"], targets: ["op://task/**"] },
    { ops: ["op.result", "op.status", "op.cancel"], targets: ["op://**"] },
  ];
  const m = await t.persona("mallory", rights);
  const mallory = await t.connect(m.identity, [m.token]);
  const a = await t.persona("alice", rights);
  const alice = await t.connect(a.identity, [a.token]);
  return { mallory, alice };
}

/** Submitting the task that never ends, and following its ops. */
const HANG_RIGHTS = [
  { ops: ["compute.submit"], targets: ["op://task/hang"] },
  { ops: ["op.cancel", "op.status"], targets: ["op://**"] },
];

/** Persona `id` with {@link HANG_RIGHTS}, connected. */
async function hangingTasks(t: TestKernel, id: string): Promise<KernelClient> {
  const p = await t.persona(id, HANG_RIGHTS);
  return t.connect(p.identity, [p.token]);
}

describe("bounded after authentication: DEFERRED ops", () => {
  it("ops queued or running are bounded per persona and in the kernel (RESOURCE); a finished op frees its slot", async () => {
    // No admin reserve: the two trees share all of maxPendingOps (the reserve: task-inputs-share.test.ts).
    const bounds = { computeWorkers: 1, maxPendingOpsPerPersona: 3, maxPendingOps: 5, adminReserve: 0 };
    await withTasks(bounds, { hang: "hang" }, async (t) => {
      const connect = (id: string) => hangingTasks(t, id);
      const a = await connect("hoarder");
      const b = await connect("other");
      // One task runs on the single worker; the rest wait in the queue, each in memory and a row.
      const mine = [await a.compute.task("hang"), await a.compute.task("hang"), await a.compute.task("hang")];
      await assert.rejects(a.compute.task("hang"), klass("RESOURCE", "hoarder already has 3 ops queued or running"));
      const theirs = [await b.compute.task("hang"), await b.compute.task("hang")];
      await assert.rejects(b.compute.task("hang"), klass("RESOURCE", "the kernel already has 5 ops"));
      // A cancelled op frees its persona's slot.
      const last = mine[2] as (typeof mine)[number];
      assert.equal(await a.ops.cancel(last), true);
      assert.equal((await a.ops.status(last)).state, "cancelled");
      mine[2] = await a.compute.task("hang");
      await assert.rejects(a.compute.task("hang"), klass("RESOURCE"));
      for (const op of mine) await a.ops.cancel(op);
      for (const op of theirs) await b.ops.cancel(op);
      assert.match((await b.compute.task("hang")).op, /^op:\/\//, "every slot free again");
    });
  });
});

describe("bounded after authentication: the inputs tasks hold", () => {
  it("a task's input is bounded, and so are the inputs of the tasks queued or running in the kernel: each waits in the kernel's memory", async () => {
    const bounds = { computeWorkers: 1, maxTaskInputBytes: 64 * 1024, maxQueuedTaskInputBytes: 200 * 1024 };
    await withTasks(bounds, { hang: "hang" }, async (t) => {
      const connect = (id: string) => hangingTasks(t, id);
      const a = await connect("stuffer");
      const b = await connect("bystander");
      // Counted as 64 ops each, ~15 MiB of input apiece were ~900 MiB of the kernel's heap for one tree.
      await assert.rejects(a.compute.task("hang", "x".repeat(100_000)), klass("SEMANTIC", "maxTaskInputBytes"));
      const mine = [await a.compute.task("hang", "y".repeat(60_000))];
      for (let i = 0; i < 2; i++) mine.push(await a.compute.task("hang", "y".repeat(60_000)));
      await assert.rejects(a.compute.task("hang", "z".repeat(60_000)), klass("RESOURCE", "maxQueuedTaskInputBytes"));
      await assert.rejects(b.compute.task("hang", "z".repeat(60_000)), klass("RESOURCE", "maxQueuedTaskInputBytes"));
      // The running task's input counts until it ends, as the queued ones' do.
      const first = mine[0] as (typeof mine)[number];
      assert.equal((await a.ops.status(first)).state, "running");
      assert.equal(await a.ops.cancel(first), true);
      const theirs = await b.compute.task("hang", "z".repeat(60_000));
      for (const op of mine.slice(1)) await a.ops.cancel(op);
      await b.ops.cancel(theirs);
    });
  });
});

describe("bounded after authentication: finished ops over a persona's tree", () => {
  it("a persona tree keeps at most maxFinishedOpsPerPersona finished ops with their results, the newest; other trees' are not touched", async () => {
    const bounds = { computeWorkers: 1, maxFinishedOpsPerPersona: 2, maxPendingOpsPerPersona: 2 };
    await withTasks(bounds, { square: "square" }, async (t) => {
      const rights = [
        { ops: ["compute.submit"], targets: ["op://task/square"] },
        { ops: ["op.result", "op.status"], targets: ["op://**"] },
      ];
      const connect = async (id: string): Promise<KernelClient> => {
        const p = await t.persona(id, rights);
        return t.connect(p.identity, [p.token]);
      };
      const other = await connect("other");
      const kept = await other.compute.task("square", 9);
      assert.equal(await other.ops.wait(kept), 81);
      // Sub-personas of one tree share its bound: three each, six finished in all. The tree is
      // `tree`'s, registered above them (personas only side by side would be trees of their own).
      await t.persona("tree", rights);
      const done: { c: KernelClient; op: string }[] = [];
      for (const id of ["tree/s0", "tree/s1"]) {
        const c = await connect(id);
        for (const x of [1, 2, 3]) {
          const d = await c.compute.task("square", x);
          assert.equal(await c.ops.wait(d), x * x);
          done.push({ c, op: d.op });
        }
      }
      const rows = t.k.inspect.listOps(undefined, 1000);
      const ids = (p: (persona: string) => boolean) => rows.filter((r) => p(r.persona)).map((r) => `op://${r.id}`);
      // The tree keeps its newest two (tree/s1's last two), results with them; older ones are forgotten.
      assert.deepEqual(
        ids((p) => p.startsWith("tree/")).sort(),
        done
          .slice(4)
          .map((d) => d.op)
          .sort(),
      );
      const first = done[0] as (typeof done)[number];
      await assert.rejects(first.c.ops.status(first.op), klass("SEMANTIC", "no op"));
      const last = done[5] as (typeof done)[number];
      assert.equal(await last.c.ops.result(last.op), 9);
      // No result outlives its op: two of the tree's, one of the other's.
      const db = new Database(join(t.home, HOME_FILES.database), { readonly: true });
      try {
        assert.equal((db.prepare("SELECT count(*) AS n FROM op_results").get() as { n: number }).n, 3);
      } finally {
        db.close();
      }
      // Another tree's op is untouched.
      assert.deepEqual(
        ids((p) => p === "other"),
        [kept.op],
      );
      assert.equal(await other.ops.result(kept), 81);
    });
  });
});

describe("finished ops: a result its poller has yet to read is never trimmed", () => {
  const rights = [
    { ops: ["compute.submit"], targets: ["op://task/square", "op://task/gate"] },
    { ops: ["op.result", "op.status"], targets: ["op://**"] },
  ];
  /** Polls op.status (which hands out no result) until the op has finished. */
  const finished = async (c: KernelClient, op: string) => {
    while (["queued", "running"].includes((await c.ops.status(op)).state)) await new Promise((r) => setTimeout(r, 5));
  };

  it("ops.wait gets its result though the tree finishes many more ops between two of its polls; an unread flood is refused (RESOURCE), never trimmed", async () => {
    const bounds = { computeWorkers: 2, maxFinishedOpsPerPersona: 6, maxPendingOpsPerPersona: 3 };
    await withTasks(bounds, { square: "square", gate: "gate" }, async (t) => {
      await t.persona("tree", rights);
      const pa = await t.persona("tree/waiter", rights);
      const ps = await t.persona("tree/busy", rights);
      const a = await t.connect(pa.identity, [pa.token]);
      const s = await t.connect(ps.identity, [ps.token]);
      const gateFile = join(t.home, "gate-open");
      const awaited = await a.compute.task("gate", gateFile);
      // Between the waiter's first poll (DEFERRED) and its next, the op finishes and its tree
      // finishes 4 × maxFinishedOpsPerPersona more ops, each read by its own waiter.
      let flooded = false;
      const call: CallFn = async (op, target, args, opts) => {
        const r = await a.call(op, target, args, opts);
        if (op === "op.result" && r.status === "DEFERRED" && !flooded) {
          flooded = true;
          writeFileSync(gateFile, "");
          await finished(a, awaited.op);
          for (let i = 0; i < 24; i++) assert.equal(await s.ops.wait(await s.compute.task("square", i)), i * i);
        }
        return r;
      };
      assert.equal(await new OpsApi(call).wait(awaited), "opened", "the awaited result survived the trim");
      assert.ok(flooded);
      const tree = () => t.k.inspect.listOps(undefined, 1000).filter((r) => r.persona.startsWith("tree/"));
      assert.ok(tree().length <= 6, `the tree keeps at most 6 finished ops: ${tree().length}`);
      // A flood of results nobody reads: each holds its place, so beyond the bound the submit is refused.
      const unread: string[] = [];
      for (let i = 0; i < 6; i++) {
        const d = await s.compute.task("square", i);
        await finished(s, d.op);
        unread.push(d.op);
      }
      // Counted over the tree above tree/busy: its refusal names the bound, not the tree's count.
      await assert.rejects(
        s.compute.task("square", 7),
        klass("RESOURCE", "tree (with the personas under it) has no room for more op results not yet read"),
      );
      await assert.rejects(a.compute.task("square", 7), klass("RESOURCE"), "the whole tree shares the bound");
      assert.equal(tree().length, 6);
      for (const [i, op] of unread.entries()) assert.equal(await s.ops.result(op), i * i, "every unread result kept");
      // Read, they give their places back.
      assert.equal(await s.ops.wait(await s.compute.task("square", 8)), 64);
      assert.ok(tree().length <= 6);
    });
  });

  it("auditBatchMax above MAX_AUDIT_BATCH is a ConfigError: the start's walk for cut-off effects relies on batches far below its slack", () => {
    const home = "/nonexistent-kpip-home";
    assert.equal(resolveConfig({ flags: { home, auditBatchMax: MAX_AUDIT_BATCH } }).auditBatchMax, MAX_AUDIT_BATCH);
    assert.throws(
      () => resolveConfig({ flags: { home, auditBatchMax: MAX_AUDIT_BATCH + 1 } }),
      (e: unknown) => e instanceof ConfigError && /auditBatchMax must be at most 4096/.test(e.message),
    );
  });

  it("maxFinishedOpsPerPersona below maxPendingOpsPerPersona is a ConfigError", () => {
    assert.throws(
      () =>
        resolveConfig({ flags: { home: "/nonexistent-kpip-home", maxFinishedOpsPerPersona: 10, maxPendingOpsPerPersona: 64 } }),
      (e: unknown) =>
        e instanceof ConfigError && /maxFinishedOpsPerPersona 10 must be at least maxPendingOpsPerPersona 64/.test(e.message),
    );
  });
});

describe("bounded after authentication: tasks under the concurrent limit", () => {
  it("a task holds one of its persona's concurrent slots from its submit until it ends, queued or running, as a command does", async () => {
    await withTasks({ computeWorkers: 1 }, { hang: "hang" }, async (t) => {
      const rights = [...HANG_RIGHTS, { ops: ["resource.query"], targets: ["persona://**"] }];
      const p = await t.persona("hog", rights, { limits: { concurrent: 3 } });
      const c = await t.connect(p.identity, [p.token]);
      const inFlight = async () => ((await c.call("resource.query", "persona://hog")).payload as { inFlight: number }).inFlight;
      // Without the slot, concurrent=3 let the persona keep maxPendingOpsPerPersona tasks running
      // and queued, every worker of the kernel among them, and counted none of them.
      const ops = [await c.compute.task("hang"), await c.compute.task("hang")];
      assert.equal((await c.ops.status(ops[1] as (typeof ops)[number])).state, "queued");
      assert.equal(await inFlight(), 3, "the running task, the queued one and the query itself");
      // A task that ends (here cancelled) gives its slot back.
      assert.equal(await c.ops.cancel(ops[0] as (typeof ops)[number]), true);
      assert.equal(await inFlight(), 2);
      ops.push(await c.compute.task("hang"), await c.compute.task("hang"));
      await assert.rejects(
        c.compute.task("hang"),
        klass("RESOURCE", "concurrent exceeded for hog: 3 requests in flight, limit 3"),
      );
    });
  });
});

describe("bounded after authentication: a task's result", () => {
  it("a task's result is bounded (2 × maxOutputBytes) and must be answerable: past either its op fails RESOURCE and nothing of it is stored", async () => {
    await withTasks({ computeWorkers: 1, maxOutputBytes: 64 * 1024 }, { fill: "fill" }, async (t) => {
      const p = await t.persona("expander", [
        { ops: ["compute.submit"], targets: ["op://task/fill"] },
        { ops: ["op.result", "op.status"], targets: ["op://**"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      const failed = async (n: number, item: unknown) => {
        const op = await c.compute.task("fill", { n, item } as never);
        await assert.rejects(c.ops.wait(op), (e: Error & { errorClass?: string }) => e.errorClass === "RESOURCE");
        return c.ops.status(op);
      };
      // A small input asking for a result of ~300 KB (any size: the kernel stored 200 MiB ones, its
      // main thread cloning and encoding them meanwhile, and none past maxBody could be read).
      const big = await failed(300_000, "x");
      assert.equal(big.state, "failed");
      assert.match(big.message ?? "", /the task's result is \d+ bytes: at most 131072 \(2 × maxOutputBytes\)/);
      // Within the bytes, past the items op.result decodes an answer with: it failed INTERNAL at each op.result.
      const many = await failed(120_000, 0);
      assert.match(many.message ?? "", /the task's result cannot be answered/);
      // A result within both is answered as it was.
      const ok = await c.compute.task("fill", { n: 3, item: "y" } as never);
      assert.deepEqual(await c.ops.wait(ok), ["y", "y", "y"]);
      const db = new Database(join(t.home, HOME_FILES.database), { readonly: true });
      try {
        const row = db.prepare("SELECT count(*) AS n, max(length(result)) AS most FROM op_results").get() as {
          n: number;
          most: number;
        };
        assert.deepEqual(row, { n: 1, most: 7 });
      } finally {
        db.close();
      }
    });
  });
});

describe("a task stopped in its worker", () => {
  it("another persona's task queued behind a task its persona cancels (or whose deadline passes) runs on a new worker, not on the one being terminated", async () => {
    await withTasks({ computeWorkers: 1 }, { hang: "hang", square: "square" }, async (t) => {
      const { mallory, alice } = await rivals(t);
      const stuck = await mallory.compute.task("hang");
      // A deadline well past any wait of a square here: a lost task fails at it.
      const waiting = await alice.compute.task("square", 7, { timeoutMs: 30_000 });
      assert.equal((await alice.ops.status(waiting)).state, "queued");
      assert.equal(await mallory.ops.cancel(stuck), true);
      // It was handed to the worker being terminated, and waited there for its deadline (by default 1 h).
      assert.equal(await alice.ops.wait(waiting), 49);
      // Likewise behind a task stopped at its deadline.
      const short = await mallory.compute.task("hang", null, { timeoutMs: 200 });
      const next = await alice.compute.task("square", 8);
      await assert.rejects(mallory.ops.wait(short), klass("RESOURCE", "deadline exceeded"));
      assert.equal(await alice.ops.wait(next), 64);
    });
  });
});

describe("task workers that die", () => {
  it("a task that leaves an exception behind (thrown after it returned) or ends its worker does not end the kernel nor hold a worker: later tasks run", async () => {
    await withTasks(
      { computeWorkers: 1 },
      { "late-throw": "lateThrow", exit: "exit", crash: "crash", square: "square" },
      async (t) => {
        const p = await t.persona("buggy", [
          { ops: ["compute.submit"], targets: ["op://task/**"] },
          { ops: ["op.result", "op.status"], targets: ["op://**"] },
        ]);
        const c = await t.connect(p.identity, [p.token]);
        const square = async (x: number) => c.ops.wait(await c.compute.task("square", x));
        const gate = join(t.home, "late-gate");
        assert.equal(await c.ops.wait(await c.compute.task("late-throw", gate)), "armed");
        // The worker, idle, dies of it: with no listener its 'error' ended the kernel (this process).
        writeFileSync(gate, "");
        while (!existsSync(`${gate}.thrown`)) await new Promise((r) => setTimeout(r, 5));
        // A task sent to the worker as it dies (it failed INTERNAL) runs again on a new worker.
        assert.equal(await square(2), 4);
        assert.equal(await square(3), 9);
        // A task whose own exception ends its worker (a new one, on its second run) fails INTERNAL, saying
        // not the exception's message: it may be another persona's task's (the kernel's log has it).
        const crashed = await c.compute.task("crash", null, { timeoutMs: 120_000 });
        await assert.rejects(c.ops.wait(crashed), klass("INTERNAL", "task worker crashed (the kernel's log says why)"));
        // A task that ends its worker fails at once (it waited for its deadline, holding the worker).
        const gone = await c.compute.task("exit", null, { timeoutMs: 120_000 });
        await assert.rejects(c.ops.wait(gone), klass("INTERNAL", "task worker exited (code 3)"));
        assert.equal(await square(4), 16);
      },
    );
  });
});

describe("a task worker that crashes right after its task returned", () => {
  it("the task's posted result is its end, not the worker's crash that follows: it succeeds, run once", async () => {
    await withTasks({ computeWorkers: 1 }, { "square-then-crash": "squareThenCrash" }, async (t) => {
      const { mallory } = await rivals(t);
      // Node orders a worker's 'error' (another port) against its posted messages as it comes:
      // often first. Handled there, the task failed INTERNAL "task worker crashed" though it had
      // returned. Each round is a new worker (the last one crashed); many rounds, so the order flips.
      for (let x = 1; x <= 40; x++)
        assert.equal(await mallory.ops.wait(await mallory.compute.task("square-then-crash", x)), x * x, `round ${x}`);
    });
  });
});

describe("a reused task worker", () => {
  it("another persona's task ending its worker after it returned does not fail the task the worker runs next: that one runs on a new worker", async () => {
    await withTasks({ computeWorkers: 1 }, { "late-exit": "lateExit", gate: "gate" }, async (t) => {
      const { mallory, alice } = await rivals(t);
      const trap = join(t.home, "trap");
      assert.equal(await mallory.ops.wait(await mallory.compute.task("late-exit", trap)), "armed");
      // alice's task ran on the one worker, which still held mallory's timer; now a worker serves one
      // persona (case 614): alice's runs on a new one, mallory's idle worker kept with the timer in it.
      const gate = join(t.home, "alice-gate");
      const mine = await alice.compute.task("gate", gate);
      while ((await alice.ops.status(mine)).state !== "running") await new Promise((r) => setTimeout(r, 5));
      writeFileSync(trap, "");
      // mallory's timer ends mallory's worker while alice's task runs.
      while (!existsSync(`${trap}.exiting`)) await new Promise((r) => setTimeout(r, 5));
      writeFileSync(gate, "");
      // It failed INTERNAL, "task worker exited (code 4)": mallory's exit, in alice's answer.
      assert.equal(await alice.ops.wait(mine), "opened");
    });
  });
});

describe("a reused task worker that dies past its task's deadline", () => {
  it("the task whose reused worker died once its deadline had passed ends at its deadline, not posted to a new worker to be stopped there", async () => {
    // A long heartbeat: the clock jumps below, and no peer must look silent for it.
    await withTasks({ computeWorkers: 1, heartbeatMs: 600_000 }, { "late-exit": "lateExit", gate: "gate" }, async (t) => {
      const { mallory } = await rivals(t);
      const trap = join(t.home, "trap");
      assert.equal(await mallory.ops.wait(await mallory.compute.task("late-exit", trap)), "armed");
      // mallory's next task runs on the worker her first one left its timer in (a reused worker).
      const mine = await mallory.compute.task("gate", join(t.home, "never"), { timeoutMs: 60_000 });
      while ((await mallory.ops.status(mine)).state !== "running") await new Promise((r) => setTimeout(r, 5));
      // The host's clock is past the task's deadline, its timer not yet run (a clock step, or a turn
      // that ran long): the worker dies then.
      const now = Date.now;
      const step = 61_000;
      Date.now = () => now() + step;
      try {
        writeFileSync(trap, "");
        // Posted to a new worker with no time left, it was stopped there: "the task was stopped".
        await assert.rejects(
          mallory.ops.wait(mine),
          klass("RESOURCE", "deadline exceeded: its worker ended as its deadline passed; not run again"),
        );
      } finally {
        Date.now = now;
      }
    });
  });
});

describe("the shared task workers, in turn", () => {
  it("a persona tree's queued tasks do not hold the task workers ahead of another tree's: the next free worker takes the other tree's task", async () => {
    await withTasks({ computeWorkers: 1 }, { gate: "gate", hang: "hang", square: "square" }, async (t) => {
      const { mallory, alice } = await rivals(t);
      const gate = join(t.home, "gate");
      const first = await mallory.compute.task("gate", gate);
      // Tasks of mallory's queued behind it, each of which would run up to maxRuntimeMs (1 h).
      const queued = [await mallory.compute.task("hang"), await mallory.compute.task("hang")];
      const mine = await alice.compute.task("square", 5);
      assert.equal((await alice.ops.status(mine)).state, "queued");
      writeFileSync(gate, "");
      assert.equal(await mallory.ops.wait(first), "opened");
      // Taken in the order of submission, it waited behind mallory's hung tasks (for hours: a queued
      // task's deadline is counted only once it starts; this test's timeout ends it).
      assert.equal(await alice.ops.wait(mine), 25);
      assert.deepEqual(
        await Promise.all(queued.map(async (op) => (await mallory.ops.status(op)).state)),
        ["running", "queued"],
        "mallory's own tasks keep their order",
      );
      for (const op of queued) await mallory.ops.cancel(op);
    });
  });
});
