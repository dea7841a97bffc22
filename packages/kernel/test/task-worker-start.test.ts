import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import wt from "node:worker_threads";
import { klass, removeHome, startKernel } from "./harness.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

// A worker per persona (engine.ts workerFor) starts threads all the time: Node throws from
// `new Worker` when the thread cannot be made (ERR_WORKER_INIT_FAILED: EAGAIN at the process's
// thread limit, or no memory for its stack).
describe("a task worker that cannot be started", () => {
  it("fails the task it was for (INTERNAL), which neither hangs 'running' nor keeps its slot; the next task runs", async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("square", { module: TASKS, export: "square" }),
    );
    const Real = wt.Worker;
    try {
      const p = await t.persona("alice", [
        { ops: ["compute.submit"], targets: ["op://task/**"] },
        { ops: ["op.result", "op.status"], targets: ["op://**"] },
      ]);
      const alice = await t.connect(p.identity, [p.token]);
      // The kernel's own Worker (a named import of node:worker_threads, kept in step by syncBuiltinESMExports).
      wt.Worker = function NoThread() {
        throw Object.assign(new Error("Worker initialization failure: EAGAIN"), { code: "ERR_WORKER_INIT_FAILED" });
      } as unknown as typeof wt.Worker;
      syncBuiltinESMExports();
      const op = await alice.compute.task("square", 3);
      wt.Worker = Real;
      syncBuiltinESMExports();
      await assert.rejects(alice.ops.wait(op), klass("INTERNAL", "task worker"), "it ended, failed");
      assert.equal(await alice.ops.wait(await alice.compute.task("square", 4)), 16, "a worker starts for the next task");
    } finally {
      wt.Worker = Real;
      syncBuiltinESMExports();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a queued task whose worker cannot be started when another's task ends fails INTERNAL: the kernel serves on", async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) => {
      k.registerTask("square", { module: TASKS, export: "square" });
      k.registerTask("gate", { module: TASKS, export: "gate" });
    });
    const Real = wt.Worker;
    try {
      const rights = [
        { ops: ["compute.submit"], targets: ["op://task/**"] },
        { ops: ["op.result", "op.status"], targets: ["op://**"] },
      ];
      const a = await t.persona("alice", rights);
      const b = await t.persona("bob", rights);
      const alice = await t.connect(a.identity, [a.token]);
      const bob = await t.connect(b.identity, [b.token]);
      const gate = join(t.home, "gate-open");
      const held = await alice.compute.task("gate", gate);
      // alice's task holds the one worker; bob's waits for it, and needs a worker of its own.
      const queued = await bob.compute.task("square", 5);
      wt.Worker = function NoThread() {
        throw Object.assign(new Error("Worker initialization failure: EAGAIN"), { code: "ERR_WORKER_INIT_FAILED" });
      } as unknown as typeof wt.Worker;
      syncBuiltinESMExports();
      // alice's task ends: its worker's message starts bob's task, which finds no thread.
      writeFileSync(gate, "");
      assert.equal(await alice.ops.wait(held), "opened");
      await assert.rejects(bob.ops.wait(queued), klass("INTERNAL", "task worker"));
      wt.Worker = Real;
      syncBuiltinESMExports();
      assert.equal(await bob.ops.wait(await bob.compute.task("square", 6)), 36, "the kernel serves on");
    } finally {
      wt.Worker = Real;
      syncBuiltinESMExports();
      await t.stop();
      removeHome(t.home);
    }
  });
});
