import type { ShmNative, ShmSegment } from "./peer.js";

/** The calls of a POSIX shared-memory module this wraps (shm-typed-array's, by name). */
export interface ShmModule {
  create(count: number, type: "Buffer", key: string, perm: string): Buffer | null;
  get(key: string, type: "Buffer"): Buffer | null;
  detach(key: string): number;
  destroy(key: string): boolean;
}

interface Mapping {
  buf: Buffer;
  refs: number;
  destroy: boolean;
}

// One table per process, shared by every copy of this code (kernel and client may both run in
// one process): the module unmaps by name, so a second mapping of a name in this process would
// let one side unmap the other's memory under it.
const KEY = Symbol.for("kpip.shm.mappings");
const table = (): Map<string, Mapping> => {
  const g = globalThis as unknown as Record<symbol, Map<string, Mapping> | undefined>;
  g[KEY] ??= new Map();
  return g[KEY];
};

/** A segment reached through a mapping: copies in and out, short past the mapping's end. */
export function mappedSegment(buf: Buffer): ShmSegment {
  return {
    read: (off, len, into) => {
      const src = buf.subarray(Math.min(off, buf.length), Math.min(off + len, buf.length));
      if (into === undefined) return Buffer.from(src);
      into.set(src, 0);
      return into.subarray(0, src.length);
    },
    write: (data, off) => buf.set(data, off),
  };
}

/**
 * A {@link ShmNative} over a name-keyed module, with one mapping per name per process,
 * reference-counted: memory is unmapped (and a destroyed segment unlinked) only when the last
 * user in this process lets go, so no Buffer ever points at unmapped memory.
 */
export function refCountedShm(mod: ShmModule): ShmNative {
  const maps = table();
  const release = (name: string, destroy: boolean) => {
    const m = maps.get(name);
    if (!m) return;
    m.destroy ||= destroy;
    if (--m.refs > 0) return;
    maps.delete(name);
    if (m.destroy) mod.destroy(name);
    else mod.detach(name);
  };
  return {
    create: (name, size) => {
      if (maps.has(name)) return null;
      const buf = mod.create(size, "Buffer", name, "600");
      if (!buf) return null;
      maps.set(name, { buf, refs: 1, destroy: false });
      return mappedSegment(buf);
    },
    open: (name) => {
      const m = maps.get(name);
      if (m) {
        m.refs++;
        return mappedSegment(m.buf);
      }
      const buf = mod.get(name, "Buffer");
      if (!buf) return null;
      maps.set(name, { buf, refs: 1, destroy: false });
      return mappedSegment(buf);
    },
    detach: (name) => release(name, false),
    destroy: (name) => release(name, true),
  };
}
