import { fdatasyncSync, readdirSync, readlinkSync, realpathSync } from "node:fs";
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
 * after each round that copied the kernel's new commits the worker syncs the database file
 * itself, and the top-up's sync flushes only the pages the top-up wrote (at 256 requests in
 * flight that sync took 26–28 ms on the kernel's thread before, a few ms after:
 * docs/architecture.md). An extra sync of pages SQLite already wrote changes nothing about
 * what a crash can lose.
 */
const { path, intervalMs } = workerData as { path: string; intervalMs: number };
const db = new Database(path);
db.pragma("busy_timeout = 5000");
/** SQLite's count of commits by other connections, at the last round: the kernel's commits since then. */
let lastDataVersion = -1;
const target = realpathSync(path);
const linksToDatabase = (fd: number) => {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === target;
  } catch {
    return false;
  }
};
let borrowed: number | undefined;
/** Rounds left before a scan that found nothing is tried again (a scan reads a link per open descriptor: every session's socket). */
let skipScans = 0;
/**
 * A descriptor this process already has on the database file (a connection's, SQLite's own),
 * checked before each use. The worker must not open and close one of its own: POSIX locks
 * belong to the process and the file, and closing any descriptor of the file drops them all —
 * the shared lock every connection here holds on it included ("How To Corrupt An SQLite
 * Database File" §2.2). None found (no /proc): no sync, the top-up syncs as before.
 */
const databaseFd = (): number | undefined => {
  if (borrowed !== undefined && linksToDatabase(borrowed)) return borrowed;
  borrowed = undefined;
  if (skipScans > 0) {
    skipScans--;
    return undefined;
  }
  try {
    for (const e of readdirSync("/proc/self/fd")) {
      if (linksToDatabase(Number(e))) {
        borrowed = Number(e);
        break;
      }
    }
  } catch {
    // no /proc: nothing to borrow
  }
  if (borrowed === undefined) skipScans = 100;
  return borrowed;
};
const syncDatabase = (): boolean => {
  const fd = databaseFd();
  if (fd === undefined) return false;
  fdatasyncSync(fd);
  return true;
};
type Result = { busy: number; log: number; checkpointed: number };
/** Frames left uncopied after a round below which the worker stops for this interval. */
const LEFT_FRAMES = 64;
const run = () => {
  try {
    // PASSIVE never waits for the writer: it copies what it can and leaves the rest for the next round.
    const passive = () => (db.pragma("wal_checkpoint(PASSIVE)") as Result[])[0];
    const dataVersion = db.pragma("data_version", { simple: true }) as number;
    let r = passive();
    // Under load commits land while a round copies; a few more rounds, each shorter, copy what
    // landed meanwhile, so a top-up on the kernel's thread finds little left to copy.
    for (let i = 0; i < 3 && r && r.log - r.checkpointed > LEFT_FRAMES; i++) r = passive();
    if (!r) return;
    // Frames were copied when the kernel committed since the last round (checkpointed counts
    // frames of the current WAL, which can repeat across a restart of it).
    const copied = r.checkpointed > 0 && dataVersion !== lastDataVersion;
    lastDataVersion = dataVersion;
    let synced = false;
    try {
      synced = copied && syncDatabase();
    } catch (e) {
      return syncFailed(e as Error);
    }
    parentPort?.postMessage({ log: r.log, checkpointed: r.checkpointed, synced });
  } catch (e) {
    // SQLite's own sync inside the checkpoint: as the worker's.
    if ((e as { code?: string }).code === "SQLITE_IOERR_FSYNC") return syncFailed(e as Error);
    parentPort?.postMessage({ error: (e as Error).message });
  }
};
/**
 * The database file could not be synced: Linux reports a writeback error to one sync only, so a
 * later round's would pass while pages copied from the WAL are lost. No more rounds; the kernel
 * stops taking changes and keeps the WAL (checkpointer.ts).
 */
const syncFailed = (e: Error) => {
  clearInterval(timer);
  parentPort?.postMessage({ syncError: e.message });
};
const timer = setInterval(run, intervalMs);
parentPort?.on("message", (m: string) => {
  if (m !== "stop") return;
  clearInterval(timer);
  db.close();
  parentPort?.close();
});
