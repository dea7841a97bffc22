import { randomBytes } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type Database from "better-sqlite3";
import { ConfigError } from "../config.js";
import { takeLock } from "../file-lock.js";
import { unsafeDirectoryAbove } from "../secure-files.js";
import { removeTrees } from "./remove.js";

/**
 * Scratch roots the kernel names (`<tmpdir>/kpip-scratch-<uid>-<home hash>`) outlive a kernel
 * killed without stopping whose home never starts again. A kernel holds an exclusive SQLite
 * lock (fcntl, like the home's kernel.lock) on a file in its root while it runs and before it
 * makes any scratch directory there:
 * - `.lock`, a bubblewrap kernel's: its processes die with it (--die-with-parent), so a root
 *   whose `.lock` is free is provably nobody's, and another kernel starting removes it whole
 *   while holding that lock itself;
 * - `.live`, a kernel's without the sandbox: its processes may outlive it, so a root whose
 *   `.live` is free is removed only when it holds nothing else (no process's directory);
 * A root with neither (an older kpip's) is removed only when empty and untouched for a day: no
 * bytes can go with it, and a kernel still using it makes it again at its next launch.
 */
export const ROOT_LOCK = ".lock";
export const ROOT_LIVE = ".live";
/** The lock file a kernel holds in the root it named. */
export type RootLockFile = typeof ROOT_LOCK | typeof ROOT_LIVE;
/** How long an empty root without a lock file is left alone (one being made this moment, or an idle older kernel's). */
const LOCKLESS_AGE_MS = 24 * 3600_000;

/**
 * Makes `root` if needed and takes its lock; the caller holds it (closes the connection) for as
 * long as the root is its own. Waits out another kernel removing the root as stale this moment
 * (then makes it again).
 */
export function lockScratchRoot(root: string, file: RootLockFile = ROOT_LOCK): Database.Database {
  for (let attempt = 1; ; attempt++) {
    // No one else's to pass through: launch() lets the sandbox's group through under a root kernel.
    if (!ownScratchRoot(root)) mkdirSync(root, { recursive: true, mode: 0o700 });
    // Made meanwhile by someone else (the name is free, then theirs): nothing is created in it.
    ownScratchRoot(root);
    const lock = join(root, file);
    let db: Database.Database | undefined;
    try {
      db = takeLock(lock, 10_000, true);
    } catch (e) {
      // A remover took the root away before the file's creation or before its opening: make it again.
      const code = (e as { code?: string }).code;
      if (code !== "SQLITE_CANTOPEN" && code !== "ENOENT") throw e;
    }
    // Taken after a remover let go: the root it locked is gone, this one is unlinked.
    if (db && existsSync(lock)) return db;
    db?.close();
    if (attempt === 5) throw new Error(`the scratch root ${root} keeps being removed`);
  }
}

/**
 * The root a kernel names for its home: `usual` (`<tmpdir>/kpip-scratch-<uid>-<home hash>`), or,
 * when another local user took that name first (a link, a directory of theirs: anyone can compute
 * it), the same name with 16 random hex digits added, which no one can take first. Refused, the
 * taken name left the home's sandbox unavailable for as long as it stayed. The stale-root sweep
 * matches both forms.
 */
export function namedScratchRoot(usual: string): string {
  return scratchRootTaken(usual) ? fallbackScratchRoot(usual) : usual;
}

/** The name a kernel falls back to when `usual` is taken: 16 random hex digits added, never the same twice. */
export function fallbackScratchRoot(usual: string): string {
  return `${usual}-${randomBytes(8).toString("hex")}`;
}

/**
 * Whether `root` is there but not a directory of the kernel's user ({@link ownScratchRoot}'s
 * refusal): another local user took the name. Also asked again once the sandbox is set up: taken
 * between namedScratchRoot's look and the hold (or the trial run), every launch was refused.
 */
export function scratchRootTaken(root: string): boolean {
  try {
    ownScratchRoot(root);
    return false;
  } catch (e) {
    if (!(e instanceof UnsafeScratchRootError)) throw e;
    return true;
  }
}

/** A scratch root that is there but is not a directory of the kernel's user. */
export class UnsafeScratchRootError extends Error {
  override name = "UnsafeScratchRootError";
}

/**
 * Whether `root` is there as a directory of the kernel's user (true) or not at all (false);
 * anything else throws {@link UnsafeScratchRootError}. A root the kernel names lies in the shared
 * temp directory under a name anyone can compute (the uid, a hash of the home's path): another
 * local user may make it first, as a link to a live kernel's root or a directory of theirs.
 * Followed, the kernel listed and removed that kernel's processes' directories, took or removed
 * its lock, and created files and removed trees where that user chose.
 */
export function ownScratchRoot(root: string): boolean {
  const st = lstatSync(root, { throwIfNoEntry: false });
  if (!st) return false;
  const me = process.getuid?.();
  const why = st.isSymbolicLink()
    ? "is a symbolic link"
    : !st.isDirectory()
      ? "is not a directory"
      : me !== undefined && st.uid !== me
        ? `belongs to uid ${st.uid}, not to the kernel's user (uid ${me})`
        : undefined;
  if (why)
    throw new UnsafeScratchRootError(
      `scratch root ${root} ${why}: another local user may have put it there; nothing is made, listed or removed through it (remove it, or give --sandbox-scratch a directory of yours)`,
    );
  return true;
}

/**
 * The scratch root's place, checked at start (ConfigError). No directory above it may be one
 * another user can change (as for the home, case 518): bubblewrap binds a scratch directory by
 * path after the kernel made it, so whoever could move the root away could put theirs, or a link
 * to the home, in its place. And an operator's root (`explicit`) that is there must not be a
 * shared directory — sticky, or writable by others or another group: `/tmp`, `/var/tmp` — which
 * the first launch would make the kernel's own (0700, or root:<sandbox group> 0710 under root,
 * its sticky bit gone), taking it from every other user of the host.
 */
export function checkScratchRootPlace(root: string, explicit: boolean): void {
  const st = lstatSync(root, { throwIfNoEntry: false });
  const groupOthers = st !== undefined && (st.mode & 0o020) !== 0 && st.gid !== process.getgid?.();
  if (explicit && st?.isDirectory() && ((st.mode & 0o1002) !== 0 || groupOthers))
    throw new ConfigError(
      `sandboxScratch ${root} is a shared directory (mode ${(st.mode & 0o7777).toString(8)}): the kernel would make it its own (0700, no sticky bit), taking it from everyone else; give a directory for the kernel alone, such as ${join(root, "kpip-scratch")}`,
    );
  // What is not there yet is made by the kernel (0700): the first directory above that is.
  let p = resolve(root);
  while (!existsSync(dirname(p)) && dirname(p) !== p) p = dirname(p);
  const why = unsafeDirectoryAbove(p, `the scratch root ${root}`, "directory");
  if (why) throw new ConfigError(why);
}

/** {@link ownScratchRoot} that never throws: true only when `root` is there and the kernel's user's own directory. */
export function isOwnScratchRoot(root: string): boolean {
  try {
    return ownScratchRoot(root);
  } catch {
    return false;
  }
}

/** Whether the root's lock file is still there (the root was not removed under the kernel). */
export function scratchRootLocked(root: string, file: RootLockFile = ROOT_LOCK): boolean {
  return existsSync(join(root, file));
}

/** Gives up the root's lock, its file first (so no remover finds it free meanwhile). */
export function unlockScratchRoot(root: string, db: Database.Database, file: RootLockFile = ROOT_LOCK): void {
  rmSync(join(root, file), { force: true });
  db.close();
}

/**
 * For a kernel that names its root and runs without the sandbox (its processes may outlive it,
 * so it holds `.live`, not `.lock`): removes the `.lock` an earlier bubblewrap run of the same
 * home left, before anything runs there. Left in place, that free lock would mark this live
 * kernel's root as stale to every other kernel starting.
 */
export function disownScratchRoot(root: string): void {
  if (isOwnScratchRoot(root)) rmSync(join(root, ROOT_LOCK), { force: true });
}

/**
 * Removes the kernel-named scratch roots of `uid` in `parent` whose kernel provably ended (see
 * above), but `own` (this kernel's, swept by the sandbox); returns how many. A stale bubblewrap
 * root is renamed aside (`<name>.gone-<hex>`: its name is free at once) and handed to `remove`,
 * which takes it away in the background (remove.ts: whatever depth or size its processes left);
 * one left aside by an earlier start is handed over again.
 */
export function removeStaleRoots(
  parent: string,
  uid: number,
  own: string,
  remove: (paths: string[]) => unknown = removeTrees,
  now = Date.now(),
): number {
  // The usual name, or one a kernel fell back to when that was taken (namedScratchRoot).
  const named = new RegExp(`^kpip-scratch-${uid}-[0-9a-f]{12}(?:-[0-9a-f]{16})?$`);
  const gone = new RegExp(`^kpip-scratch-${uid}-[0-9a-f]{12}(?:-[0-9a-f]{16})?\\.gone-[0-9a-f]{16}$`);
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return 0;
  }
  let removed = 0;
  const aside: string[] = [];
  for (const name of names) {
    if (gone.test(name)) {
      const d = lstatSync(join(parent, name), { throwIfNoEntry: false });
      if (d?.isDirectory() && d.uid === uid) aside.push(join(parent, name));
      continue;
    }
    if (!named.test(name)) continue;
    const root = join(parent, name);
    if (resolve(root) === resolve(own)) continue;
    try {
      // Ours: a directory of this uid, no link.
      const d = lstatSync(root);
      if (!d.isDirectory() || d.uid !== uid) continue;
      if (existsSync(join(root, ROOT_LOCK))) {
        const whole = () => {
          // While the lock is held: the root's name and its lock file go with the rename.
          const to = `${root}.gone-${randomBytes(8).toString("hex")}`;
          renameSync(root, to);
          aside.push(to);
          return true;
        };
        if (removeLocked(root, ROOT_LOCK, uid, whole)) removed++;
      } else if (existsSync(join(root, ROOT_LIVE))) {
        if (removeLocked(root, ROOT_LIVE, uid, () => removeIfOnly(root, ROOT_LIVE))) removed++;
      } else if (now - d.mtimeMs > LOCKLESS_AGE_MS) {
        // Only when empty (rmdir refuses anything else): nothing of anyone's goes with it.
        rmdirSync(root);
        removed++;
      }
    } catch {
      // Not provably stale (its kernel holds the lock, something is in it) or gone meanwhile: left for the next start.
    }
  }
  if (aside.length) remove(aside);
  return removed;
}

/**
 * Takes the root's lock `file` (never waiting: held means its kernel runs) and, holding it,
 * removes the root with `remove`; false when the lock is held or not the file looked at.
 */
function removeLocked(root: string, file: RootLockFile, uid: number, remove: () => boolean): boolean {
  const lock = join(root, file);
  const f = lstatSync(lock);
  if (!f.isFile() || f.uid !== uid) return false;
  const db = takeLock(lock, 0, false);
  try {
    // The lock taken must be the file looked at: a kernel re-making its root meanwhile made a new one.
    if (lstatSync(lock, { throwIfNoEntry: false })?.ino !== f.ino) return false;
    return remove();
  } finally {
    db.close();
  }
}

/**
 * A root whose kernel ran without the sandbox: removed only if nothing but its free lock file
 * is in it (a directory left there may be used by a process that outlived its kernel).
 */
function removeIfOnly(root: string, file: RootLockFile): boolean {
  // SQLite may leave a journal beside a lock file first written by a kernel killed while it held it.
  const lockFiles = [file, `${file}-journal`];
  if (readdirSync(root).some((n) => !lockFiles.includes(n))) return false;
  for (const f of lockFiles) rmSync(join(root, f), { force: true });
  // Refused if a kernel put something there since: it is then that kernel's.
  rmdirSync(root);
  return true;
}
