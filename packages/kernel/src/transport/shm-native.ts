import {
  closeSync,
  constants,
  fstatSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import type { ShmNative, ShmSegment } from "@kpip/protocol";

let loaded: { native?: ShmNative; reason?: string } | undefined;

/**
 * POSIX shared memory as the kernel reaches it: through each segment's file in /dev/shm
 * (where Linux keeps shm_open's objects), read and written with pread/pwrite — never mapped.
 * A peer may ftruncate its segment at any moment; through a mapping the next access would
 * raise SIGBUS and kill the kernel, through the descriptor it is a short read (a protocol
 * error for that session only). The copy costs what copying out of a mapping costs: one
 * memcpy, done by the OS. Without /dev/shm — or with KPIP_SHM=off — sessions simply never
 * negotiate "shm"; `reason` says why, for the one log line.
 */
export function loadShmNative(dir = "/dev/shm"): { native?: ShmNative; reason?: string } {
  if (loaded) return loaded;
  if (process.env.KPIP_SHM === "off") {
    loaded = { reason: "disabled by KPIP_SHM=off" };
    return loaded;
  }
  try {
    if (!statSync(dir).isDirectory()) throw new Error("not a directory");
    loaded = { native: fileShm(dir) };
  } catch (e) {
    loaded = { reason: `no POSIX shared-memory directory ${dir} (${(e as Error).message})` };
  }
  return loaded;
}

/**
 * The client maps segments with shm-typed-array, which keeps the segment's size in a size_t
 * (8 bytes, little-endian on every platform Node runs this on) ahead of the bytes it exposes:
 * offset 0 of a segment is byte 8 of its file. The kernel keeps that layout and never trusts
 * the stored size.
 */
const FILE_HEADER = 8;

/** The segment behind an open descriptor: every access a copy, short past the file's end. */
function fdSegment(fd: number): ShmSegment {
  return {
    read(off, len, into) {
      const out = into ?? Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const n = readSync(fd, out, got, len - got, FILE_HEADER + off + got);
        if (n === 0) break;
        got += n;
      }
      return got === len ? out : out.subarray(0, got);
    },
    write(data, off) {
      let put = 0;
      while (put < data.length) put += writeSync(fd, data, put, data.length - put, FILE_HEADER + off + put);
    },
  };
}

/** A {@link ShmNative} over the files of `dir`; one descriptor per name this kernel holds. */
export function fileShm(dir: string): ShmNative {
  const fds = new Map<string, number>();
  const path = (name: string) => `${dir}/${name.replace(/^\//, "")}`;
  // O_NOFOLLOW: never through a link a peer planted; O_NONBLOCK: a FIFO planted under the name
  // cannot block the kernel on open (and is refused below, as is anything but a regular file).
  const flags = constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK;
  const close = (name: string) => {
    const fd = fds.get(name);
    if (fd === undefined) return;
    fds.delete(name);
    closeSync(fd);
  };
  return {
    create(name, size) {
      if (fds.has(name)) return null;
      let fd: number;
      try {
        fd = openSync(path(name), flags | constants.O_CREAT | constants.O_EXCL, 0o600);
      } catch {
        return null;
      }
      try {
        ftruncateSync(fd, FILE_HEADER + size);
        const header = Buffer.alloc(FILE_HEADER);
        header.writeBigUInt64LE(BigInt(size), 0);
        writeSync(fd, header, 0, FILE_HEADER, 0);
      } catch {
        // No room in /dev/shm: this session's bodies go inline.
        closeSync(fd);
        unlinkSync(path(name));
        return null;
      }
      fds.set(name, fd);
      return fdSegment(fd);
    },
    open(name) {
      if (fds.has(name)) return null;
      let fd: number;
      try {
        fd = openSync(path(name), flags);
      } catch {
        return null;
      }
      const st = fstatSync(fd);
      if (!st.isFile() || st.uid !== (process.getuid?.() ?? st.uid)) {
        closeSync(fd);
        return null;
      }
      fds.set(name, fd);
      return fdSegment(fd);
    },
    detach: close,
    destroy(name) {
      // Emptied before it is removed: a peer still mapping it (its session is over) must not keep
      // its pages, the kernel's memory, after the kernel let the bytes go.
      const fd = fds.get(name);
      if (fd !== undefined) {
        try {
          ftruncateSync(fd, 0);
        } catch {
          // removed below all the same
        }
      }
      close(name);
      try {
        unlinkSync(path(name));
      } catch {
        // already gone
      }
    },
  };
}

/** Removes segments a crashed kernel with this id left behind (POSIX shm lives in /dev/shm on Linux). */
export function sweepShmSegments(kernelId: string, dir = "/dev/shm"): number {
  let removed = 0;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return 0;
  }
  for (const n of names) {
    if (!n.startsWith(`kpip.${kernelId}.`)) continue;
    try {
      unlinkSync(`${dir}/${n}`);
      removed++;
    } catch {
      // gone already, or not ours to remove
    }
  }
  return removed;
}
