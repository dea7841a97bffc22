// A task waiting in the queue (every worker busy) is bound by its deadline as a running one is
// (PROTOCOL §7.5): it ends when its deadline passes, never starts, and frees what it held.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { klass, removeHome, startKernel, until } from "./harness.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

describe("queued ops and their deadline", () => {
  it("a task queued behind a busy worker ends RESOURCE at its deadline without starting, and frees its place", async () => {
    const t = await startKernel({ computeWorkers: 1, maxPendingOpsPerPersona: 2 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const p = await t.persona("alice", [
        { ops: ["compute.submit"], targets: ["op://task/hang"] },
        { ops: ["op.*"], targets: ["op://**"] },
      ]);
      const alice = await t.connect(p.identity, [p.token]);
      // The one worker hangs; the next task waits in the queue with a short deadline.
      const running = await alice.compute.task("hang");
      // (Not asked whether it is queued: 50 ms may have passed by the answer on a busy machine.)
      const queued = await alice.compute.task("hang", null, { timeoutMs: 50 });
      // Its deadline passes while it is queued: it ends then (not when a worker frees up, here never).
      await assert.rejects(alice.ops.wait(queued, { signal: AbortSignal.timeout(60_000) }), klass("RESOURCE", "deadline"));
      const s = await alice.ops.status(queued);
      assert.equal(s.state, "failed");
      assert.equal(s.startedAt, undefined, "it never started");
      // Its place among the tree's ops queued or running is free again (maxPendingOpsPerPersona 2).
      const next = await alice.compute.task("hang");
      assert.equal((await alice.ops.status(next)).state, "queued");
      await alice.ops.cancel(next);
      await alice.ops.cancel(running);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a task queued when the token that submitted it expires ends CAPABILITY without starting", async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const admin = await t.admin();
      const busy = await admin.compute.task("hang");
      const p = await t.persona("alice", [{ ops: ["compute.submit"], targets: ["op://task/hang"] }], { ttlMs: 5000 });
      const alice = await t.connect(p.identity, [p.token]);
      const queued = await alice.compute.task("hang");
      // Its deadline is its token's expiry: it ends then, still queued (the admin watches it).
      const s = await until(
        async () => {
          const x = await admin.ops.status(queued);
          return x.state === "queued" ? undefined : x;
        },
        60_000,
        "the queued task ended",
      );
      assert.deepEqual([s.state, s.errorClass, s.startedAt], ["failed", "CAPABILITY", undefined]);
      assert.match(s.message ?? "", /expired; it never started/);
      await admin.ops.cancel(busy);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
