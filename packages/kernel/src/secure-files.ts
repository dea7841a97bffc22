import {
  chmodSync,
  closeSync,
  constants,
  fsyncSync,
  lstatSync,
  openSync,
  readdirSync,
  realpathSync,
  renameSync,
  type Stats,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";

/**
 * The kernel home holds every persona's objects, the audit log and the keys. It must be a real
 * directory (not a symlink) owned by the kernel's user and reachable by nobody else (0700),
 * every file in it 0600 and the user's own. Checked before the kernel writes anything: a home
 * another local user created or planted links in could otherwise make the kernel write where
 * that user chose, or read what the kernel writes.
 */
export class UnsafeHomeError extends Error {
  override name = "UnsafeHomeError";
}

const uid = (): number | undefined => process.getuid?.();

function owned(st: Stats, what: string): void {
  const me = uid();
  if (me !== undefined && st.uid !== me) {
    throw new UnsafeHomeError(`${what} belongs to uid ${st.uid}, not to the kernel's user (uid ${me}); refusing to use it`);
  }
}

/**
 * Checks the home and everything directly in it: refuses a symlink, a non-directory, or a home
 * or entry owned by another user, or an entry that is a symlink; then takes group and other
 * access away (home and directories 0700, files 0600). Directories below the first level are
 * the kernel's own (agent working directories) and are not walked.
 */
export function secureHome(home: string): void {
  checkAncestors(home);
  const st = lstatSync(home);
  if (st.isSymbolicLink()) throw new UnsafeHomeError(`kernel home ${home} is a symbolic link; give the real directory`);
  if (!st.isDirectory()) throw new UnsafeHomeError(`kernel home ${home} is not a directory`);
  owned(st, `kernel home ${home}`);
  if ((st.mode & 0o077) !== 0) chmodSync(home, 0o700);
  for (const name of readdirSync(home)) {
    const path = join(home, name);
    const e = lstatSync(path);
    if (e.isSymbolicLink()) throw new UnsafeHomeError(`${path} is a symbolic link; the kernel home holds no links`);
    owned(e, path);
    if (e.isDirectory()) {
      if ((e.mode & 0o077) !== 0) chmodSync(path, 0o700);
    } else if (e.isFile() && (e.mode & 0o077) !== 0) chmodSync(path, 0o600);
  }
}

/**
 * Every directory above the home — along the path as given and along its real path — must be
 * root's or the kernel user's, and writable by no one else unless sticky (as /tmp; the user's own
 * group may write it). Otherwise
 * whoever can write one of them renames the home (or the directory holding it) away while the
 * kernel runs and puts a directory of theirs in its place: the kernel goes on opening files by
 * path there (object bodies, segments, key files), writing persona data where they read it.
 */
function checkAncestors(home: string): void {
  const why = unsafeDirectoryAbove(home, `the kernel home ${home}`, "home");
  if (why) throw new UnsafeHomeError(why);
}

/**
 * Why a directory above `path` lets another local user put something of theirs at `path` (a
 * directory along the path as given or its real path that is not root's or the kernel user's,
 * or that others may write without the sticky bit), or undefined. `what` names the path in the
 * message, `noun` what lies there ("home", "file"). The kernel home, the audit anchor file and
 * an explicit config file are all opened by path: a file checked at one open can be another at
 * the next, unless no one else can change the directories it lies in.
 */
export function unsafeDirectoryAbove(path: string, what: string, noun: string): string | undefined {
  const me = uid();
  const chains = new Set<string>();
  const parent = dirname(resolve(path));
  for (const start of [parent, realpathSync(parent)]) {
    for (let d = start; ; d = dirname(d)) {
      chains.add(d);
      if (dirname(d) === d) break;
    }
  }
  for (const d of chains) {
    const st = statSync(d);
    if (me !== undefined && st.uid !== me && st.uid !== 0)
      return `${d}, above ${what}, belongs to uid ${st.uid}: that user could put a ${noun} of theirs in its place; use a ${noun} whose directories are yours or root's`;
    // Group-writable is the user's own business when the group is theirs (a private group,
    // under umask 002); another group's members, or everyone, could move the path's target.
    const sticky = (st.mode & 0o1000) !== 0;
    const groupOthers = (st.mode & 0o020) !== 0 && st.gid !== process.getgid?.();
    if (!sticky && ((st.mode & 0o002) !== 0 || groupOthers))
      return `${d}, above ${what}, is writable by group or others (mode ${(st.mode & 0o777).toString(8)}) without the sticky bit: they could move the ${noun} away and put theirs in its place; use a directory only you can write`;
  }
  return undefined;
}

/**
 * {@link unsafeDirectoryAbove} for a file read by path, which follows a link: the directories
 * above it along the path as given, and above the file a link names (`what (real path)` in the
 * message). Throws when `path` names nothing (a missing file, a broken link): the read says why.
 */
export function unsafeDirectoryAboveFile(path: string, what: string): string | undefined {
  const real = realpathSync(path);
  return (
    unsafeDirectoryAbove(path, what, "file") ??
    (real === resolve(path) ? undefined : unsafeDirectoryAbove(real, `${what} (${real})`, "file"))
  );
}

const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** Creates `path` (0600) with `data`, failing if anything — a file or a link — is already there. */
export function createExclusive(path: string, data: string | Uint8Array): void {
  const fd = openSync(path, CREATE_NEW, 0o600);
  try {
    writeSync(fd, typeof data === "string" ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Creates `path` empty and 0600 unless something is already there; true if it was created. */
export function createIfAbsent(path: string): boolean {
  try {
    closeSync(openSync(path, CREATE_NEW, 0o600));
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    return false;
  }
}

/** Makes sure `path` exists as the user's own regular file, 0600 (created empty if absent); never follows a link. */
export function ensurePrivateFile(path: string): void {
  if (createIfAbsent(path)) return;
  const st = lstatSync(path);
  if (!st.isFile()) throw new UnsafeHomeError(`${path} is not a regular file (a link or something else was put there)`);
  owned(st, path);
  if ((st.mode & 0o077) !== 0) chmodSync(path, 0o600);
}

/**
 * Replaces `path` atomically: a fresh temp file beside it (created exclusively, never through a
 * link; a stale one from a crash is removed first), synced, then renamed over it. Refused when
 * the file has another name (a hard link): the rename would leave the old content there, with
 * one link, where no link count shows it any more.
 */
export function replaceAtomically(path: string, data: string): void {
  let links = 1;
  try {
    links = lstatSync(path).nlink;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  if (links > 1)
    throw new UnsafeHomeError(
      `${path} has ${links} hard links: replacing it would leave its old content under the other names; remove them (find / -xdev -samefile ${path}) and keep one`,
    );
  const tmp = `${path}.tmp`;
  try {
    unlinkSync(tmp);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  createExclusive(tmp, data);
  renameSync(tmp, path);
}

/** Writes the pid file: the old one (a crashed run's) is removed, the new one created exclusively. */
export function writePidFile(path: string, pid: number): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  createExclusive(path, `${pid}\n`);
}

// Defined with the protocol: the client and the CLI read files a persona handed over too.
export { readRegularFile, UnreadableFileError } from "@kpip/protocol/regular-file";
