import { closeSync, constants, fstatSync, ftruncateSync, openSync, readSync, statSync, unlinkSync, writeSync } from "node:fs";
import type { ShmNative, ShmSegment } from "./peer.js";

/**
 * POSIX shared memory as both sides of a session reach it (`@kpip/protocol/shm-files`, apart
 * from the package's I/O-free main entry): through each segment's file in /dev/shm (where Linux
 * keeps shm_open's objects), read and written with pread/pwrite — never mapped. A segment's
 * owner may shrink it at any moment (a peer on purpose, the kernel when it empties its segment
 * at the end of a session); through a mapping the next access would raise SIGBUS and kill the
 * reader, through the descriptor it is a short read (a protocol error for that session only).
 * A write into a full /dev/shm fails (ENOSPC) instead of faulting: the body goes inline. The
 * copy costs what copying out of a mapping costs: one memcpy, done by the OS.
 */

/**
 * Bytes ahead of a segment's offset 0 in its file: its size as a little-endian uint64 (the
 * layout of the `shm-typed-array` module earlier clients mapped with; PROTOCOL §3.7). Written at
 * creation, never trusted on reading.
 */
export const SHM_FILE_HEADER = 8;

/** The segment behind an open descriptor: every access a copy, short past the file's end. */
function fdSegment(fd: number): ShmSegment {
  return {
    read(off, len, into) {
      const out = into ?? Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const n = readSync(fd, out, got, len - got, SHM_FILE_HEADER + off + got);
        if (n === 0) break;
        got += n;
      }
      return got === len ? out : out.subarray(0, got);
    },
    write(data, off) {
      let put = 0;
      while (put < data.length) put += writeSync(fd, data, put, data.length - put, SHM_FILE_HEADER + off + put);
    },
  };
}

/**
 * A {@link ShmNative} over the files of `dir`; one descriptor per name it holds. A segment is
 * opened only if it is a regular file of this process's user (any, for root, as shm_open would).
 */
export function fileShm(dir: string): ShmNative {
  const fds = new Map<string, number>();
  // One file of `dir`: a name holding a '/' past its first character (or naming `.`, `..`) is no segment.
  const path = (name: string): string | undefined => {
    const base = name.replace(/^\//, "");
    return base === "" || base === "." || base === ".." || base.includes("/") ? undefined : `${dir}/${base}`;
  };
  // O_NOFOLLOW: never through a link someone planted; O_NONBLOCK: a FIFO planted under the name
  // cannot block on open (and is refused below, as is anything but a regular file).
  const flags = constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK;
  const uid = process.getuid?.();
  const close = (name: string) => {
    const fd = fds.get(name);
    if (fd === undefined) return;
    fds.delete(name);
    closeSync(fd);
  };
  return {
    create(name, size) {
      const file = path(name);
      if (fds.has(name) || file === undefined) return null;
      let fd: number;
      try {
        fd = openSync(file, flags | constants.O_CREAT | constants.O_EXCL, 0o600);
      } catch {
        return null;
      }
      try {
        ftruncateSync(fd, SHM_FILE_HEADER + size);
        const header = Buffer.alloc(SHM_FILE_HEADER);
        header.writeBigUInt64LE(BigInt(size), 0);
        writeSync(fd, header, 0, SHM_FILE_HEADER, 0);
      } catch {
        // No room in /dev/shm: this session's bodies go inline.
        closeSync(fd);
        unlinkSync(file);
        return null;
      }
      fds.set(name, fd);
      return fdSegment(fd);
    },
    open(name) {
      const file = path(name);
      if (fds.has(name) || file === undefined) return null;
      let fd: number;
      try {
        fd = openSync(file, flags);
      } catch {
        return null;
      }
      const st = fstatSync(fd);
      if (!st.isFile() || (uid !== undefined && uid !== 0 && st.uid !== uid)) {
        closeSync(fd);
        return null;
      }
      fds.set(name, fd);
      return fdSegment(fd);
    },
    detach: close,
    destroy(name) {
      // Emptied before it is removed: a peer still holding it (its session is over) must not keep
      // its pages, this side's memory, after this side let the bytes go.
      const fd = fds.get(name);
      if (fd !== undefined) {
        try {
          ftruncateSync(fd, 0);
        } catch {
          // removed below all the same
        }
      }
      close(name);
      const file = path(name);
      try {
        if (file !== undefined) unlinkSync(file);
      } catch {
        // already gone
      }
    },
  };
}

/**
 * Shared memory through the files of `dir`, or why not: without that directory (Linux's place
 * for POSIX shared memory), or with KPIP_SHM=off, a side never negotiates "shm" and says why
 * once in its log.
 */
export function loadFileShm(dir = "/dev/shm"): { native?: ShmNative; reason?: string } {
  if (process.env.KPIP_SHM === "off") return { reason: "disabled by KPIP_SHM=off" };
  try {
    if (!statSync(dir).isDirectory()) throw new Error("not a directory");
    return { native: fileShm(dir) };
  } catch (e) {
    return { reason: `no POSIX shared-memory directory ${dir} (${(e as Error).message})` };
  }
}
