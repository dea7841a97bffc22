import { lstatSync, readFileSync, realpathSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { ConfigError } from "../config.js";

/**
 * A path no sandbox may see. A tree (the home, the scratch root) is hidden whole, and no read
 * path may lie inside it. A file (the socket, the audit anchor, the gRPC TLS key, the config
 * file) is hidden with its directory, or alone when that directory holds a bound path.
 */
export interface HiddenPath {
  path: string;
  /** What it is, for the error that refuses a read path. */
  what: string;
  tree: boolean;
}

/** One read path: bound from its real path (resolved once, at start) to the path it was named by. */
export interface Bind {
  source: string;
  dest: string;
}

/**
 * Where a sandbox would see a hidden path (`dest`), and the host path the sandbox sees there
 * (`host`: what the cover is made as, a directory or a file).
 */
export interface Cover {
  dest: string;
  host: string;
}

export interface SandboxView {
  system: Bind[];
  binds: Bind[];
  covers: Cover[];
}

export const within = (p: string, dir: string) => p === dir || p.startsWith(dir.endsWith("/") ? dir : `${dir}/`);

/**
 * `p` with every symbolic link resolved (and `..`, a trailing slash). A path that does not
 * exist (yet) is its deepest existing ancestor's real path with the rest appended: what it
 * will be when it is made there.
 */
export function realPath(p: string): string {
  let head = resolve(p);
  const rest: string[] = [];
  for (;;) {
    try {
      return join(realpathSync(head), ...rest);
    } catch {
      if (head === "/") return resolve(p);
      rest.unshift(basename(head));
      head = dirname(head);
    }
  }
}

/** One mount (a line of /proc/self/mountinfo): the directory `root` of the filesystem on `dev` shown at `point`. */
export interface Mount {
  id: string;
  parent: string;
  dev: string;
  root: string;
  point: string;
}

/** The mount table as this process sees it ("" when it cannot be read): what {@link parseMounts} reads. */
export function readMountInfo(): string {
  try {
    return readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return "";
  }
}

const octal = (f: string) => f.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));

export function parseMounts(text: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of text.split("\n")) {
    const [id, parent, dev, root, point] = line.split(" ");
    if (id && parent && dev && root && point) mounts.push({ id, parent, dev, root: octal(root), point: octal(point) });
  }
  return mounts;
}

/** A host path as the filesystem knows it: which filesystem, and the path in it (the same for every name a bind mount gives it). */
interface Location {
  dev: string;
  path: string;
}

/**
 * Where the real path `p` lives, by the mount that shows it: from the root mount down the
 * tree, at each step the child mounted nearest on the way to `p` (one mounted over a directory
 * above another mount hides that mount; one mounted on the same point sits on top of it).
 * Undefined without a mount table: then only real paths and inodes are compared.
 */
function locate(p: string, mounts: readonly Mount[]): Location | undefined {
  const ids = new Set(mounts.map((m) => m.id));
  let cur: Mount | undefined;
  for (const m of mounts) if (m.point === "/" && !ids.has(m.parent)) cur = m;
  if (!cur) return undefined;
  for (let steps = 0; steps < mounts.length; steps++) {
    let next: Mount | undefined;
    for (const m of mounts)
      if (m.parent === cur.id && m !== cur && within(p, m.point) && (!next || m.point.length <= next.point.length)) next = m;
    if (!next) break;
    cur = next;
  }
  return { dev: cur.dev, path: join(cur.root, p.slice(cur.point.length)) };
}

const locWithin = (a: Location | undefined, b: Location | undefined) => !!a && !!b && a.dev === b.dev && within(a.path, b.path);

/** Bound paths: the system directories that exist here, and the read paths by real path. */
export function sandboxBinds(systemDirs: readonly string[], readPaths: readonly string[]): { system: Bind[]; binds: Bind[] } {
  const system: Bind[] = [];
  for (const d of systemDirs) {
    try {
      // Bound only when a directory (a symbolic link is recreated as one: launch()).
      if (lstatSync(d).isDirectory()) system.push({ source: realPath(d), dest: d });
    } catch {
      // not on this system
    }
  }
  // Parents before children: a read path inside another is mounted on top of it, not under it.
  const binds = readPaths.map((p) => ({ source: realPath(p), dest: resolve(p) })).sort((a, b) => a.dest.length - b.dest.length);
  for (const b of binds)
    if (b.source === "/" || within(b.source, "/proc"))
      // Bound over the sandbox's own /proc (and /dev, /tmp): the kernel's processes, and through them the host.
      throw new ConfigError(`sandbox read path ${b.dest} is ${b.source}: it would show the host's /proc to every sandbox`);
  return { system, binds };
}

/**
 * What every sandbox binds and where it must cover a hidden path, by real path, not by the
 * names the operator gave: a read path named through a symbolic link (a shell's logical $PWD),
 * a home named so, or a bind mount would otherwise show that path under a name no string
 * comparison finds. Computed at start and again at a launch that finds the mount table changed
 * (Sandbox.launch), with the binds found at start.
 */
export function sandboxView(
  systemDirs: readonly string[],
  readPaths: readonly string[],
  hidden: readonly HiddenPath[],
  mounts: readonly Mount[] = parseMounts(readMountInfo()),
): SandboxView {
  const { system, binds } = sandboxBinds(systemDirs, readPaths);
  return { system, binds, covers: sandboxCovers(system, binds, hidden, mounts) };
}

/**
 * Each place a hidden path is seen gets its cover: under each bound path whose real path holds
 * it; under each bound path or mount point below one that is the same directory (device and
 * inode) as one of its ancestors; and, by the mount table, under each bound path or mount
 * point below one that shows its filesystem's directory above it (a bind mount of the home's
 * parent), or whole where a mount point below a bound path shows a directory inside it (a bind
 * mount of a directory in the home). A read path that would show part of a hidden tree (it is,
 * lies inside, or is a bind mount of a directory inside the home) cannot be covered without
 * hiding it: a ConfigError.
 *
 * Symbolic links inside a bound directory resolve in the sandbox's own mount namespace, where
 * every place the hidden path appears is covered; so they show nothing either.
 */
export function sandboxCovers(
  system: readonly Bind[],
  binds: readonly Bind[],
  hidden: readonly HiddenPath[],
  mounts: readonly Mount[],
): Cover[] {
  const bound = [...system, ...binds];
  // Every place a bound path shows a host directory: its root, and each mount point inside it.
  const points = bound.flatMap((b) => [
    { ...b, root: true },
    ...[...new Set(mounts.map((m) => m.point))]
      .filter((m) => m !== b.source && within(m, b.source))
      .map((m) => ({ source: m, dest: join(b.dest, m.slice(b.source.length)), root: false })),
  ]);
  const ids = new Map<string, string | undefined>();
  const id = (p: string) => {
    if (!ids.has(p)) {
      try {
        const s = statSync(p, { bigint: true });
        ids.set(p, s.isDirectory() ? `${s.dev}:${s.ino}` : undefined);
      } catch {
        ids.set(p, undefined);
      }
    }
    return ids.get(p);
  };
  const locs = new Map<string, Location | undefined>();
  const loc = (p: string) => {
    if (!locs.has(p)) locs.set(p, locate(p, mounts));
    return locs.get(p);
  };
  const covers: Cover[] = [];
  for (const h of hidden) {
    const real = realPath(h.path);
    let target = real;
    if (h.tree) {
      for (const b of binds) {
        if (
          within(b.source, real) ||
          (id(b.source) !== undefined && id(b.source) === id(real)) ||
          locWithin(loc(b.source), loc(real))
        )
          throw new ConfigError(
            `sandbox read path ${b.dest} shows the ${h.what} ${h.path} (or a part of it) to every sandbox: name a directory outside it`,
          );
      }
      for (const b of system)
        if (within(b.source, real) || locWithin(loc(b.source), loc(real)))
          throw new ConfigError(
            `the ${h.what} ${h.path} holds the system directory ${b.dest} that every sandbox shows: choose another`,
          );
    } else {
      // Its directory (a key's or config's siblings: backups, a certificate) unless that would hide a bound path.
      const dir = dirname(real);
      if (!bound.some((b) => within(b.source, dir) || locWithin(loc(b.source), loc(dir)))) target = dir;
    }
    const ancestors: string[] = [];
    for (let a = target; ; a = dirname(a)) {
      ancestors.push(a);
      if (a === "/") break;
    }
    const where = loc(target);
    for (const p of points) {
      if (within(target, p.source)) {
        covers.push({ dest: join(p.dest, target.slice(p.source.length)), host: target });
        continue;
      }
      const at = loc(p.source);
      if (where && at && where.dev === at.dev) {
        if (within(where.path, at.path)) {
          const rest = where.path.slice(at.path.length);
          covers.push({ dest: join(p.dest, rest), host: join(p.source, rest) });
          continue;
        }
        // A mount below a bound path that shows the hidden path's inside (a read path that does was refused above): hidden whole.
        if (!p.root && within(at.path, where.path)) {
          covers.push({ dest: p.dest, host: p.source });
          continue;
        }
      }
      const pid = id(p.source);
      if (pid === undefined) continue;
      const a = ancestors.find((x) => id(x) === pid);
      if (a !== undefined) {
        const rest = target.slice(a.length);
        covers.push({ dest: join(p.dest, rest), host: join(p.source, rest) });
      }
    }
  }
  // One cover per place, outer ones first (one inside another is made in the outer's empty tmpfs).
  const unique = [...new Map(covers.map((c) => [c.dest, c])).values()];
  return unique.sort((a, b) => a.dest.length - b.dest.length);
}

/** A file no sandbox may see, which must have no other name (a hard link shows the same file wherever it is put). */
export interface SecretFile {
  path: string;
  what: string;
}

/**
 * Throws a ConfigError naming the first secret file with more than one link. Covers hide paths,
 * not files: another name for the same inode under a read path would show it. A file not there
 * (yet) passes: the kernel creates its secrets anew (O_EXCL), with one link.
 */
export function singleLinks(files: readonly SecretFile[]): void {
  for (const f of files) {
    let links: number;
    try {
      links = statSync(f.path).nlink;
    } catch {
      continue;
    }
    if (links > 1)
      throw new ConfigError(
        `the ${f.what} ${f.path} has ${links} hard links: another name for it (under a sandbox read path) would show it to every sandbox. Remove the other names (find / -xdev -samefile ${f.path}) and keep one`,
      );
  }
}
