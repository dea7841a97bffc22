import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";

/**
 * Runs passive WAL checkpoints of one database on its own connection, off the kernel's
 * thread, and reports after each how many frames the WAL holds (the kernel tops up when the
 * WAL stops resetting under sustained load).
 */
const { path, intervalMs } = workerData as { path: string; intervalMs: number };
const db = new Database(path);
db.pragma("busy_timeout = 5000");
const run = () => {
  try {
    // PASSIVE never waits for the writer: it copies what it can and leaves the rest for the next round.
    const [r] = db.pragma("wal_checkpoint(PASSIVE)") as { busy: number; log: number; checkpointed: number }[];
    if (r) parentPort?.postMessage({ log: r.log, checkpointed: r.checkpointed });
  } catch (e) {
    parentPort?.postMessage({ error: (e as Error).message });
  }
};
const timer = setInterval(run, intervalMs);
parentPort?.on("message", (m: string) => {
  if (m !== "stop") return;
  clearInterval(timer);
  db.close();
  parentPort?.close();
});
