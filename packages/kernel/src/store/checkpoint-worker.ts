import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";

/** Runs passive WAL checkpoints of one database on its own connection, off the kernel's thread. */
const { path, intervalMs } = workerData as { path: string; intervalMs: number };
const db = new Database(path);
db.pragma("busy_timeout = 5000");
const run = () => {
  try {
    // PASSIVE never waits for the writer: it copies what it can and leaves the rest for the next round.
    db.pragma("wal_checkpoint(PASSIVE)");
  } catch (e) {
    parentPort?.postMessage({ error: (e as Error).message });
  }
};
const timer = setInterval(run, intervalMs);
parentPort?.on("message", (m: string) => {
  if (m !== "stop") return;
  clearInterval(timer);
  run();
  db.close();
  parentPort?.close();
});
