import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { type AuditReader, openAuditReader } from "./reader.js";
import { chainStart, finish, type RangeResult, type VerifyOptions, type VerifyResult, verifyAudit } from "./verify.js";

/**
 * `audit verify` of a kernel database file, split into contiguous ranges checked on worker
 * threads (each with its own read connection); the seams between ranges, the record count and
 * the checkpoints are checked here, so the result is the same as {@link verifyAudit}'s — the
 * first bad record is the lowest any range or seam reports. Small logs are verified inline.
 */
export async function verifyAuditFile(path: string, opts: VerifyOptions & { workers?: number } = {}): Promise<VerifyResult> {
  const reader = openAuditReader(path);
  try {
    return await verifyAuditReader(reader, opts);
  } finally {
    reader.close();
  }
}

/** {@link verifyAuditFile} on a database already open for reading (the workers read the same file). */
export async function verifyAuditReader(
  store: AuditReader,
  opts: VerifyOptions & { workers?: number } = {},
): Promise<VerifyResult> {
  const path = store.path;
  const total = store.countAudit();
  const cps = store.checkpoints();
  const start = chainStart(store.firstAuditSeq(), cps);
  const n = Math.max(1, Math.min(opts.workers ?? availableParallelism(), 8));
  // A home of an older kpip is checked here: its records are encoded by a function of this connection.
  // A live kernel's database is verified on one connection in one snapshot (workers' connections
  // would each see another moment of a growing log).
  if (n < 2 || total < 50_000 || store.columnLayout || !store.snapshot) return verifyAudit(store, opts);
  if (!("hash" in start)) return { ok: false, records: 0, checkpoints: cps.length, firstBad: start };
  const size = Math.ceil(total / n);
  const cpSeqs = cps.map((c) => c.seq);
  const done = new Array<number>(n).fill(0);
  const ranges = await Promise.all(
    Array.from({ length: n }, (_, i) => {
      const from = start.seq + 1 + i * size;
      // The last range runs to the end, so records past the counted total are found too.
      const to = i === n - 1 ? Number.POSITIVE_INFINITY : from + size - 1;
      return new Promise<RangeResult>((resolve, reject) => {
        const w = new Worker(new URL("./verify-worker.js", import.meta.url), {
          workerData: { path, segments: store.segments, from, to, cpSeqs },
        });
        w.on("message", (m: { progress?: number; result?: RangeResult }) => {
          if (m.result) resolve(m.result);
          else if (m.progress !== undefined) {
            done[i] = m.progress;
            opts.onProgress?.(
              done.reduce((a, b) => a + b, 0),
              total,
            );
          }
        });
        w.on("error", reject);
        w.on("exit", (code) => {
          if (code !== 0) reject(new Error(`audit verify worker exited with ${code}`));
        });
      });
    }),
  );
  return finish(total, cps, ranges, opts.trustedKey, start, opts.maxUnsigned);
}
