import { closeSync, constants, openSync } from "node:fs";
import Database from "better-sqlite3";

// The operating system's lock on a file (SQLite's, so released however its holder dies): the
// sandbox's scratch roots and the token key file's changes take it.

/** An exclusive lock on `path`, held until the connection closes; throws SQLITE_BUSY when another holds it (after `waitMs`). */
export function takeLock(path: string, waitMs: number, create: boolean): Database.Database {
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
