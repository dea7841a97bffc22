import { lstatSync, readlinkSync, type Stats } from "node:fs";
import { join, resolve } from "node:path";
import { KernelUnavailableError, UntrustedSocketError } from "../errors.js";

/** Most symbolic links followed on the way to a socket (Linux's own bound on one path lookup). */
const MAX_LINKS = 40;

/**
 * Why the socket at `path` may not be trusted by the user `me` (undefined: it may).
 *
 * A kernel's socket is its own user's, so one owned by another user was put there by them.
 * Checking the socket's owner alone is not enough: the check is a stat and the connect comes
 * after, and whoever can change a directory on the way can swap a socket of theirs in between
 * (node has no SO_PEERCRED to ask the connected peer). So, like ssh's StrictModes, every
 * directory from / to the socket, and every symbolic link followed, must be such that no
 * other user can change what the path names: each directory owned by `me` or root and not
 * writable by group or others — or sticky (like /tmp) with the entry in it owned by `me` or
 * root, which only they can then rename or remove. The socket itself must be `me`'s.
 *
 * A name that is not there (or cannot be looked at) is a KernelUnavailableError, as the connect
 * would report it: in a directory others may write (sticky /tmp) someone could create it after
 * this check, so the connect is not tried.
 */
export function untrustedSocket(path: string, me: number): UntrustedSocketError | KernelUnavailableError | undefined {
  const refuse = (why: string) =>
    new UntrustedSocketError(`the socket ${path} is not to be trusted: ${why}; nothing was sent to it`);
  const trusted = (uid: number) => uid === me || uid === 0;
  let dir = "/";
  let dirStat: Stats;
  const look = (p: string): Stats | KernelUnavailableError => {
    try {
      return lstatSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      return new KernelUnavailableError(`no kernel at ${path} (${code} at ${p}) — is a kernel running, and is this its socket?`, {
        cause: e,
      });
    }
  };
  const root = look(dir);
  if (root instanceof Error) return root;
  dirStat = root;
  const dirFault = (d: string, st: Stats) =>
    trusted(st.uid) ? undefined : `the directory ${d} on its path belongs to uid ${st.uid}, who can replace what is in it`;
  const rootFault = dirFault(dir, dirStat);
  if (rootFault) return refuse(rootFault);
  const todo = resolve(path).split("/").filter(Boolean);
  let links = 0;
  for (let name = todo.shift(); name !== undefined; name = todo.shift()) {
    if (name === ".") continue;
    if (name === "..") {
      // `dir` is a real path (no links in it), whose parents were each checked on the way down.
      dir = resolve(dir, "..");
      const st = look(dir);
      if (st instanceof Error) return st;
      dirStat = st;
      const fault = dirFault(dir, st);
      if (fault) return refuse(fault);
      continue;
    }
    const p = join(dir, name);
    const st = look(p);
    if (st instanceof Error) return st;
    // Who can change which file `name` is in `dir`: `dir`'s owner (checked), and anyone who may
    // write it — unless it is sticky and the entry is `me`'s or root's.
    if ((dirStat.mode & 0o022) !== 0 && !((dirStat.mode & 0o1000) !== 0 && trusted(st.uid)))
      return refuse(
        (dirStat.mode & 0o1000) !== 0
          ? `${p} belongs to uid ${st.uid} and its directory is writable by others`
          : `its directory ${dir} is writable by ${(dirStat.mode & 0o002) !== 0 ? "others" : "its group"} (mode ${(dirStat.mode & 0o7777).toString(8)}), who can replace the socket`,
      );
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) return refuse("too many symbolic links on its path");
      let target: string;
      try {
        target = readlinkSync(p);
      } catch (e) {
        return new KernelUnavailableError(`no kernel at ${path} (cannot read the link ${p})`, { cause: e });
      }
      if (target.startsWith("/")) {
        dir = "/";
        dirStat = root;
      }
      todo.unshift(...target.split("/").filter(Boolean));
      continue;
    }
    if (todo.length === 0) {
      if (!st.isSocket() || st.uid === me) return undefined; // not a socket: the connect says so
      return new UntrustedSocketError(
        `the socket ${path} belongs to uid ${st.uid}, not to this user (uid ${me}): a kernel's socket is its own user's, so another user put this one there; nothing was sent to it`,
      );
    }
    if (!st.isDirectory()) return undefined; // the connect reports ENOTDIR
    const fault = dirFault(p, st);
    if (fault) return refuse(fault);
    dir = p;
    dirStat = st;
  }
  return undefined; // the path was "/" (the connect refuses it)
}
