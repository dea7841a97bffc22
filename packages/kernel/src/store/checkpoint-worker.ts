import { closeSync, fdatasyncSync, openSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";

/**
 * Runs passive WAL checkpoints of one database on its own connection, off the kernel's
 * thread, and reports after each how many frames the WAL holds (the kernel tops up when the
 * WAL stops resetting under sustained load).
 *
 * A PASSIVE checkpoint that cannot copy every frame (under load, commits land while it copies)
 * leaves the pages it wrote to the database file unsynced: SQLite syncs the database only
 * when a checkpoint completes, which is then the kernel's top-up, on the kernel's thread. So
 * after each round that copied frames the worker syncs the database file itself, and the
 * top-up's sync flushes only the pages the top-up wrote (at 256 requests in flight that sync
 * took 26–28 ms on the kernel's thread before, a few ms after: docs/architecture.md). An extra
 * sync of pages SQLite already wrote changes nothing about what a crash can lose.
 */
const { path, intervalMs } = workerData as { path: string; intervalMs: number };
const db = new Database(path);
db.pragma("busy_timeout = 5000");
let lastCheckpointed = 0;
const syncDatabase = () => {
  const fd = openSync(path, "r");
  try {
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
};
type Result = { busy: number; log: number; checkpointed: number };
/** Frames left uncopied after a round below which the worker stops for this interval. */
const LEFT_FRAMES = 64;
const run = () => {
  try {
    // PASSIVE never waits for the writer: it copies what it can and leaves the rest for the next round.
    const passive = () => (db.pragma("wal_checkpoint(PASSIVE)") as Result[])[0];
    let r = passive();
    // Under load commits land while a round copies; a few more rounds, each shorter, copy what
    // landed meanwhile, so a top-up on the kernel's thread finds little left to copy.
    for (let i = 0; i < 3 && r && r.log - r.checkpointed > LEFT_FRAMES; i++) r = passive();
    if (!r) return;
    const copied = r.checkpointed > 0 && r.checkpointed !== lastCheckpointed;
    lastCheckpointed = r.checkpointed;
    if (copied) syncDatabase();
    parentPort?.postMessage({ log: r.log, checkpointed: r.checkpointed, synced: copied });
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
