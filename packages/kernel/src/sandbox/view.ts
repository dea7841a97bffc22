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

/** Where a sandbox would see a hidden path (`dest`), and that path on the host (`real`). */
export interface Cover {
  dest: string;
  real: string;
}

export interface SandboxView {
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

/** The host's mount points (as this process sees them): a bind mount shows a directory under another name. */
export function mountPoints(): string[] {
  let text: string;
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const points: string[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ")[4];
    if (f) points.push(f.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8))));
  }
  return points;
}

/**
 * What every sandbox binds and where it must cover a hidden path, computed once at start by
 * real path, not by the names the operator gave: a read path named through a symbolic link
 * (a shell's logical $PWD), a home named so, or a read path that is a bind mount of a directory
 * above a hidden path would otherwise show that path under a name no string comparison finds.
 * Each place a hidden path is seen gets its cover: under each bound path whose real path holds
 * it, and under each bound path or mount point below one that is the same directory (device and
 * inode) as one of its ancestors. A read path that would show part of a hidden tree (it is, or
 * lies inside, the home) cannot be covered without hiding it: the kernel refuses to start.
 *
 * Symbolic links inside a bound directory resolve in the sandbox's own mount namespace, where
 * every place the hidden path appears is covered; so they show nothing either.
 */
export function sandboxView(
  systemDirs: readonly string[],
  readPaths: readonly string[],
  hidden: readonly HiddenPath[],
  mounts: readonly string[] = mountPoints(),
): SandboxView {
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
  const bound = [...system, ...binds];
  // Every place a bound path shows a host directory: its root, and each mount point inside it.
  const points = bound.flatMap((b) => [
    b,
    ...mounts
      .filter((m) => m !== b.source && within(m, b.source))
      .map((m) => ({ source: m, dest: join(b.dest, m.slice(b.source.length)) })),
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
  const covers: Cover[] = [];
  for (const h of hidden) {
    const real = realPath(h.path);
    let target = real;
    if (h.tree) {
      for (const b of binds) {
        if (within(b.source, real) || (id(b.source) !== undefined && id(b.source) === id(real)))
          throw new ConfigError(
            `sandbox read path ${b.dest} shows the ${h.what} ${h.path} (or a part of it) to every sandbox: name a directory outside it`,
          );
      }
      for (const b of system)
        if (within(b.source, real))
          throw new ConfigError(
            `the ${h.what} ${h.path} holds the system directory ${b.dest} that every sandbox shows: choose another`,
          );
    } else {
      // Its directory (a key's or config's siblings: backups, a certificate) unless that would hide a bound path.
      const dir = dirname(real);
      if (!bound.some((b) => within(b.source, dir))) target = dir;
    }
    const ancestors: string[] = [];
    for (let a = target; ; a = dirname(a)) {
      ancestors.push(a);
      if (a === "/") break;
    }
    for (const p of points) {
      if (within(target, p.source)) {
        covers.push({ dest: join(p.dest, target.slice(p.source.length)), real: target });
        continue;
      }
      const pid = id(p.source);
      if (pid === undefined) continue;
      const a = ancestors.find((x) => id(x) === pid);
      if (a !== undefined) covers.push({ dest: join(p.dest, target.slice(a.length)), real: target });
    }
  }
  // One cover per place, outer ones first (one inside another is made in the outer's empty tmpfs).
  const unique = [...new Map(covers.map((c) => [c.dest, c])).values()];
  return { binds, covers: unique.sort((a, b) => a.dest.length - b.dest.length) };
}
