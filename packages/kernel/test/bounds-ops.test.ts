import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import Database from "better-sqlite3";
import { HOME_FILES } from "../src/index.js";
import { klass, removeHome, startKernel } from "./harness.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

describe("bounded after authentication: DEFERRED ops", () => {
  it("ops queued or running are bounded per persona and in the kernel (RESOURCE); a finished op frees its slot", async () => {
    const t = await startKernel({ computeWorkers: 1, maxPendingOpsPerPersona: 3, maxPendingOps: 5 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const rights = [
        { ops: ["compute.submit"], targets: ["op://task/hang"] },
        { ops: ["op.cancel", "op.status"], targets: ["op://**"] },
      ];
      const connect = async (id: string): Promise<KernelClient> => {
        const p = await t.persona(id, rights);
        return t.connect(p.identity, [p.token]);
      };
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
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("bounded after authentication: finished ops over a persona's tree", () => {
  it("a persona tree keeps at most maxFinishedOpsPerPersona finished ops with their results, the newest; other trees' are not touched", async () => {
    const t = await startKernel({ computeWorkers: 1, maxFinishedOpsPerPersona: 2 }, undefined, (k) =>
      k.registerTask("square", { module: TASKS, export: "square" }),
    );
    try {
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
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
