import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
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
