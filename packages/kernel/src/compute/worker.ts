/**
 * A compute worker thread: loads an embedder's task module and runs one task at a time,
 * off the kernel's main thread. Messages in: { id, module, export, args, maxResultBytes }; out:
 * { id, ok: true, result } (the value CBOR-encoded, its buffer transferred) or
 * { id, ok: false, message, errorClass }.
 */
import { parentPort } from "node:worker_threads";
// The CBOR part alone: each new worker (one per persona switch, engine.ts) loads it.
import { DEFAULT_LIMITS, decodeCanonical, encodeCanonical } from "@kpip/protocol/cbor";

interface Job {
  id: string;
  module: string;
  export: string;
  args: unknown;
  /** Largest result (CBOR-encoded) the kernel keeps. */
  maxResultBytes: number;
}

/** A task's failure with its error class. */
class TaskError extends Error {
  constructor(
    readonly errorClass: string,
    message: string,
  ) {
    super(message);
  }
}

const modules = new Map<string, Record<string, unknown>>();

/**
 * The result as the kernel stores it, encoded and checked here rather than on the kernel's main
 * thread: a task returning millions of items stalled every persona's requests while the kernel
 * cloned and encoded them, and a result of any size was stored (and none past maxBody could be read).
 */
function encodeResult(value: unknown, max: number): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = encodeCanonical(value as Parameters<typeof encodeCanonical>[0]);
  } catch (e) {
    throw new TaskError("SEMANTIC", `the task's result is not encodable: ${(e as Error).message}`);
  }
  if (bytes.byteLength > max)
    throw new TaskError("RESOURCE", `the task's result is ${bytes.byteLength} bytes: at most ${max} (2 × maxOutputBytes)`);
  // op.result decodes it within the kernel's limits: a result past them could never be answered.
  try {
    decodeCanonical(bytes, DEFAULT_LIMITS);
  } catch (e) {
    throw new TaskError("RESOURCE", `the task's result cannot be answered: ${(e as Error).message}`);
  }
  return bytes;
}

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
    // No result is stored as none (null), as before.
    if (value === undefined || value === null) {
      parentPort?.postMessage({ id: job.id, ok: true });
      return;
    }
    const result = encodeResult(value, job.maxResultBytes);
    // A fresh buffer of its own (encodeCanonical's output): transferred, not copied.
    const own = result.byteOffset === 0 && result.byteLength === result.buffer.byteLength;
    const out = own ? result : result.slice();
    parentPort?.postMessage({ id: job.id, ok: true, result: out }, [out.buffer as ArrayBuffer]);
  } catch (e) {
    const err = e as Error & { errorClass?: string };
    parentPort?.postMessage({ id: job.id, ok: false, message: err.message ?? String(e), errorClass: err.errorClass });
  }
});
