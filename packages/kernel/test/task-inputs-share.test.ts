// A task's input waits in the kernel's memory until the task ends: a few trees' hanging tasks must
// not hold the kernel's whole allowance of inputs (maxQueuedTaskInputBytes) nor of ops
// (maxPendingOps), and the admin keeps the last adminReserve of them, as of sessions and agents.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import type { KernelOptions } from "../src/index.js";
import { klass, removeHome, startKernel, type TestKernel } from "./harness.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

async function hanger(t: TestKernel, id: string): Promise<KernelClient> {
  const p = await t.persona(id, [
    { ops: ["compute.submit"], targets: ["op://task/hang"] },
    { ops: ["op.cancel", "op.status"], targets: ["op://**"] },
  ]);
  return t.connect(p.identity, [p.token]);
}

async function withHang(opts: Partial<KernelOptions>, f: (t: TestKernel) => Promise<void>): Promise<void> {
  const t = await startKernel({ computeWorkers: 1, ...opts }, undefined, (k) =>
    k.registerTask("hang", { module: TASKS, export: "hang" }),
  );
  try {
    await f(t);
  } finally {
    await t.stop();
    removeHome(t.home);
  }
}

/** An input of ~40 KB (CBOR-encoded: 40,003 bytes). */
const input = "y".repeat(40_000);

describe("task inputs held: a tree's share, the admin's reserve", () => {
  it("four trees of hanging tasks hold at most their share of maxQueuedTaskInputBytes each, and leave the admin its reserve", async () => {
    // 16 ops, 4 of them the admin's: a quarter of the 400,000 bytes (100,000) is the admin's too.
    const bounds = {
      maxTaskInputBytes: 50_000,
      maxQueuedTaskInputBytes: 400_000,
      maxQueuedTaskInputBytesPerPersona: 100_000,
      maxPendingOps: 16,
      adminReserve: 4,
    };
    await withHang(bounds, async (t) => {
      const trees = [await hanger(t, "p1"), await hanger(t, "p2"), await hanger(t, "p3"), await hanger(t, "p4")];
      const [p1, , , p4] = trees as [KernelClient, KernelClient, KernelClient, KernelClient];
      await p1.compute.task("hang", input);
      await p1.compute.task("hang", input);
      // A tree past its share is refused, naming the bound.
      await assert.rejects(p1.compute.task("hang", input), klass("RESOURCE", "maxQueuedTaskInputBytesPerPersona"));
      for (const c of trees.slice(1, 3)) for (let i = 0; i < 2; i++) await c.compute.task("hang", input);
      await p4.compute.task("hang", input);
      await assert.rejects(p4.compute.task("hang", input), klass("RESOURCE", "reserved for the admin"));
      // The admin still submits, beyond a tree's share (exempt), up to the kernel's bound.
      const admin = await t.admin();
      await admin.compute.task("hang", input);
      await admin.compute.task("hang", input);
      await assert.rejects(admin.compute.task("hang", input), klass("RESOURCE", "at most 400000, maxQueuedTaskInputBytes)"));
    });
  });

  it("trees holding their share of maxPendingOps leave the admin the last adminReserve ops", async () => {
    await withHang({ maxPendingOps: 6, maxPendingOpsPerPersona: 2, adminReserve: 2 }, async (t) => {
      const alice = await hanger(t, "alice");
      const bob = await hanger(t, "bob");
      for (const c of [alice, bob]) for (let i = 0; i < 2; i++) await c.compute.task("hang");
      const carol = await hanger(t, "carol");
      await assert.rejects(carol.compute.task("hang"), klass("RESOURCE", "reserved for the admin"));
      const admin = await t.admin();
      await admin.compute.task("hang");
      await admin.compute.task("hang");
      await assert.rejects(
        admin.compute.task("hang"),
        klass("RESOURCE", "the kernel already has 6 ops queued or running (at most 6)"),
      );
    });
  });
});
