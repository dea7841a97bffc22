/**
 * `node packages/kernel/dist/bench/task-workers.js [--workers N] [--idle N] [--personas P] [--tasks T] [--busy-ms M]`:
 * the shared task workers' throughput when several personas' tasks take turns. T tasks are queued
 * at once, interleaved across P personas (each a tree of its own), on a kernel with N workers and
 * `computeIdleWorkers` idle ones kept warm (absent: the kernel's default); each task is the
 * fixture's trivial `square`, or `busy` for M ms of the worker's own time. Prints one JSON line:
 * the wall time from the first submit to the last end by the kernel's own op timestamps, per task.
 * A worker serves one persona (security.md cases 614–617): personas beyond the warm pool pay a
 * worker start per turn, which this shows.
 */
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { removeHome, startKernel } from "../test/harness.js";

const args = process.argv.slice(2);
const opt = (name: string, d: number): number => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : d;
};
const workers = opt("--workers", 2);
const idle = opt("--idle", -1);
const personas = opt("--personas", 4);
const tasks = opt("--tasks", 120);
const busyMs = opt("--busy-ms", 0);
const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

const t = await startKernel(
  {
    computeWorkers: workers,
    ...(idle >= 0 ? { computeIdleWorkers: idle } : {}),
    maxPendingOpsPerPersona: tasks,
    maxFinishedOpsPerPersona: 2 * tasks,
    maxPendingOps: 4 * tasks,
  },
  undefined,
  (k) => {
    k.registerTask("square", { module: TASKS, export: "square" });
    k.registerTask("busy", { module: TASKS, export: "busy" });
  },
);
try {
  const rights = [
    { ops: ["compute.submit"], targets: ["op://task/**"] },
    { ops: ["op.result", "op.status"], targets: ["op://**"] },
  ];
  const clients: KernelClient[] = [];
  for (let i = 0; i < personas; i++) {
    const p = await t.persona(`p${i}`, rights);
    clients.push(await t.connect(p.identity, [p.token]));
  }
  const submitted: Promise<[KernelClient, string]>[] = [];
  for (let j = 0; submitted.length < tasks; j++)
    for (const c of clients)
      if (submitted.length < tasks) {
        const op = busyMs > 0 ? c.compute.task("busy", busyMs) : c.compute.task("square", j);
        submitted.push(op.then((o) => [c, o.op]));
      }
  let first = Number.POSITIVE_INFINITY;
  let last = 0;
  for (const [c, op] of await Promise.all(submitted)) {
    await c.ops.wait(op);
    const s = await c.ops.status(op);
    first = Math.min(first, s.createdAt);
    last = Math.max(last, s.finishedAt ?? 0);
  }
  const ms = last - first;
  console.log(
    JSON.stringify({
      workers,
      idle: idle >= 0 ? idle : "default",
      personas,
      tasks,
      busyMs,
      ms,
      perTaskMs: +(ms / tasks).toFixed(2),
    }),
  );
  for (const c of clients) await c.close();
} finally {
  await t.stop();
  removeHome(t.home);
}
