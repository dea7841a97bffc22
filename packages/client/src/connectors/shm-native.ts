import { createRequire } from "node:module";
import type { ShmNative } from "@kpip/protocol";

interface ShmTypedArray {
  create(count: number, type: "Buffer", key: string, perm: string): Buffer | null;
  get(key: string, type: "Buffer"): Buffer | null;
  detach(key: string): number;
  destroy(key: string): boolean;
}

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
    const m = createRequire(import.meta.url)("shm-typed-array") as ShmTypedArray;
    loaded = {
      native: {
        create: (name, size) => m.create(size, "Buffer", name, "600"),
        open: (name) => m.get(name, "Buffer"),
        detach: (name) => void m.detach(name),
        destroy: (name) => void m.destroy(name),
      },
    };
  } catch (e) {
    loaded = { reason: `the native module shm-typed-array is not available (${(e as Error).message.split("\n")[0]})` };
  }
  return loaded;
}
