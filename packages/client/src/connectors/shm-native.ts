import type { ShmNative } from "@kpip/protocol";
import { loadFileShm } from "@kpip/protocol/shm-files";

let loaded: { native?: ShmNative; reason?: string } | undefined;

/**
 * POSIX shared memory as the client reaches it: each segment's file in /dev/shm, read and
 * written with pread/pwrite, never mapped (`@kpip/protocol/shm-files`, the kernel's own). The
 * kernel empties its segment when a session ends (after a grace period for a body not yet
 * taken): a client that reads that body later gets a short read, a protocol error for that
 * session, where a mapping would have killed its process with SIGBUS. Without /dev/shm — or
 * with KPIP_SHM=off — sessions simply never negotiate "shm"; `reason` says why, for the one log line.
 */
export function loadShmNative(): { native?: ShmNative; reason?: string } {
  if (loaded) return loaded;
  const r = loadFileShm();
  loaded = r.native ? { native: removedAtExit(r.native) } : r;
  return loaded;
}

/**
 * The segments this process created are removed when it exits: a segment closed with a grace
 * period (the kernel had not taken its last body yet) waits on a timer that does not keep the
 * process alive, and a process exiting within it left the segment in /dev/shm for good.
 */
function removedAtExit(native: ShmNative): ShmNative {
  const own = new Set<string>();
  process.once("exit", () => {
    for (const name of own) {
      try {
        native.destroy(name);
      } catch {
        // already gone
      }
    }
  });
  return {
    ...native,
    create: (name, size) => {
      const seg = native.create(name, size);
      if (seg) own.add(name);
      return seg;
    },
    destroy: (name) => {
      own.delete(name);
      native.destroy(name);
    },
  };
}
