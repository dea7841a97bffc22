/** One range of a parallel `audit verify` (see verify-parallel.ts), on its own thread and connection. */
import { parentPort, workerData } from "node:worker_threads";
import { openAuditReader } from "./reader.js";
import { verifyRange } from "./verify.js";

const job = workerData as { path: string; from: number; to: number; cpSeqs: number[] };
// The main thread opened (or copied) the database; its file is read as it is.
const store = openAuditReader(job.path, { direct: true });
try {
  const result = verifyRange(store, job.from, job.to, new Set(job.cpSeqs), 10_000, (done) =>
    parentPort?.postMessage({ progress: done }),
  );
  parentPort?.postMessage({ result });
} finally {
  store.close();
}
