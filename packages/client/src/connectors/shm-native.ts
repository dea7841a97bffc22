import { createRequire } from "node:module";
import { refCountedShm, type ShmModule, type ShmNative } from "@kpip/protocol";

let loaded: { native?: ShmNative; reason?: string } | undefined;

/**
 * POSIX shared memory through `shm-typed-array` (an optional dependency built from source
 * with node-gyp); the same loader as the kernel's, kept apart because the client never
 * imports the kernel. Without it — or with KPIP_SHM=off — sessions simply never negotiate "shm";
 * `reason` says why, for the one log line.
 */
export function loadShmNative(): { native?: ShmNative; reason?: string } {
  if (loaded) return loaded;
  if (process.env.KPIP_SHM === "off") {
    loaded = { reason: "disabled by KPIP_SHM=off" };
    return loaded;
  }
  try {
    const mod = createRequire(import.meta.url)("shm-typed-array") as ShmModule;
    loaded = { native: removedAtExit(refCountedShm(mod), mod) };
  } catch (e) {
    loaded = { reason: `the native module shm-typed-array is not available (${(e as Error).message.split("\n")[0]})` };
  }
  return loaded;
}

/**
 * The segments this process created are removed when it exits: a segment closed with a grace
 * period (the kernel had not taken its last body yet) waits on a timer that does not keep the
 * process alive, and a process exiting within it left the segment in /dev/shm for good.
 */
function removedAtExit(native: ShmNative, mod: ShmModule): ShmNative {
  const own = new Set<string>();
  process.once("exit", () => {
    for (const name of own) {
      try {
        mod.destroy(name);
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
