import { closeSync, constants, existsSync, lstatSync, mkdirSync, openSync, readdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";

/**
 * Scratch roots the kernel names (`<tmpdir>/kpip-scratch-<uid>-<home hash>`) outlive a kernel
 * killed without stopping whose home never starts again. A root of a bubblewrap kernel holds
 * `<root>/.lock`, an exclusive SQLite lock (fcntl, like the home's kernel.lock) its kernel holds
 * while it runs and before it makes any scratch directory there; its processes die with it
 * (bubblewrap's --die-with-parent). So a root whose lock is free is provably nobody's: another
 * kernel starting removes it while holding that lock itself. A root without a lock (a kernel
 * without the sandbox, whose processes may outlive it, or an older kpip) is never removed.
 */
const LOCK = ".lock";

/** An exclusive lock on `path`, held until the connection closes; throws SQLITE_BUSY when another holds it (after `waitMs`). */
function takeLock(path: string, waitMs: number, create: boolean): Database.Database {
  if (create) closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600));
  const db = new Database(path, { timeout: waitMs, fileMustExist: true });
  try {
    // No journal: the file only carries the lock.
    db.pragma("journal_mode = OFF");
    db.pragma("locking_mode = EXCLUSIVE");
    // The first write takes the exclusive lock, and EXCLUSIVE mode never gives it back.
    db.exec("BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS live (pid INTEGER); COMMIT");
    return db;
  } catch (e) {
    db.close();
    throw e;
  }
}

/**
 * Makes `root` if needed and takes its lock; the caller holds it (closes the connection) for as
 * long as the root is its own. Waits out another kernel removing the root as stale this moment
 * (then makes it again).
 */
export function lockScratchRoot(root: string): Database.Database {
  for (let attempt = 1; ; attempt++) {
    mkdirSync(root, { recursive: true, mode: 0o711 });
    const lock = join(root, LOCK);
    let db: Database.Database | undefined;
    try {
      db = takeLock(lock, 10_000, true);
    } catch (e) {
      // A remover took the root away between the file's creation and its opening: make it again.
      if ((e as { code?: string }).code !== "SQLITE_CANTOPEN") throw e;
    }
    // Taken after a remover let go: the root it locked is gone, this one is unlinked.
    if (db && existsSync(lock)) return db;
    db?.close();
    if (attempt === 5) throw new Error(`the scratch root ${root} keeps being removed`);
  }
}

/** Whether the root's lock file is still there (the root was not removed under the kernel). */
export function scratchRootLocked(root: string): boolean {
  return existsSync(join(root, LOCK));
}

/** Gives up the root's lock, its file first (so no remover finds it free meanwhile). */
export function unlockScratchRoot(root: string, db: Database.Database): void {
  rmSync(join(root, LOCK), { force: true });
  db.close();
}

/**
 * For a kernel that names its root but does not lock it (no sandbox: its processes may outlive
 * it): removes a lock file an earlier bubblewrap run of the same home left, before anything runs
 * there. Left in place, that free lock would mark this live kernel's root as stale to every other
 * kernel starting.
 */
export function disownScratchRoot(root: string): void {
  rmSync(join(root, LOCK), { force: true });
}

/**
 * Removes the kernel-named scratch roots of `uid` in `parent` whose lock is free (their kernel
 * died), but `own` (this kernel's, swept by the sandbox); returns how many.
 */
export function removeStaleRoots(parent: string, uid: number, own: string): number {
  const named = new RegExp(`^kpip-scratch-${uid}-[0-9a-f]{12}$`);
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names) {
    if (!named.test(name)) continue;
    const root = join(parent, name);
    if (resolve(root) === resolve(own)) continue;
    const lock = join(root, LOCK);
    let db: Database.Database;
    let ino: number;
    try {
      // Ours: a directory and a lock file of this uid, no links.
      const d = lstatSync(root);
      const f = lstatSync(lock);
      if (!d.isDirectory() || d.uid !== uid || !f.isFile() || f.uid !== uid) continue;
      ino = f.ino;
      db = takeLock(lock, 0, false);
    } catch {
      // No lock file, or its kernel holds it: not provably stale.
      continue;
    }
    // The lock taken must be the file looked at: a kernel re-making its root meanwhile made a new one.
    if (lstatSync(lock, { throwIfNoEntry: false })?.ino !== ino) {
      db.close();
      continue;
    }
    try {
      rmSync(root, { recursive: true, force: true });
      removed++;
    } catch {
      // Left for the next start.
    } finally {
      db.close();
    }
  }
  return removed;
}
