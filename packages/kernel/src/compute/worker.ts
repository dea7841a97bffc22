/**
 * A compute worker thread: loads an embedder's task module and runs one task at a time,
 * off the kernel's main thread. Messages in: { id, module, export, args }; out:
 * { id, ok: true, value } or { id, ok: false, message, errorClass }.
 */
import { parentPort } from "node:worker_threads";

interface Job {
  id: string;
  module: string;
  export: string;
  args: unknown;
}

const modules = new Map<string, Record<string, unknown>>();

parentPort?.on("message", async (job: Job) => {
  try {
    let mod = modules.get(job.module);
    if (!mod) {
      mod = (await import(job.module)) as Record<string, unknown>;
      modules.set(job.module, mod);
    }
    const fn = mod[job.export];
    if (typeof fn !== "function") throw new Error(`task module exports no function ${job.export}`);
    const value = await fn(job.args);
    parentPort?.postMessage({ id: job.id, ok: true, value });
  } catch (e) {
    const err = e as Error & { errorClass?: string };
    parentPort?.postMessage({ id: job.id, ok: false, message: err.message ?? String(e), errorClass: err.errorClass });
  }
});
