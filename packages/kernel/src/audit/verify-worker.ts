/** One range of a parallel `audit verify` (see verify-parallel.ts), on its own thread and connection. */
import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";
import { RecordScan } from "./verify-records.js";
import { SegmentIndex, SegmentScan } from "./verify-segments.js";

const job = workerData as { path: string; segments?: string; from: number; to: number; cpSeqs: number[] };
// The main thread opened (or copied) the database and checked it is a kernel home; its file is
// read as it is. Only SQLite and the record scan are loaded: a worker starts in a few ms.
const db = new Database(job.path, { readonly: true, fileMustExist: true, timeout: 5000 });
try {
  const index = job.segments ? new SegmentIndex(db, job.segments) : undefined;
  const result = (index ? new SegmentScan(index) : new RecordScan(db)).verify(
    job.from,
    job.to,
    new Set(job.cpSeqs),
    1000,
    (done) => parentPort?.postMessage({ progress: done }),
  );
  parentPort?.postMessage({ result });
  index?.close();
} finally {
  db.close();
}
