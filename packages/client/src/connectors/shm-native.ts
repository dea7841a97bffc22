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
    loaded = { native: refCountedShm(createRequire(import.meta.url)("shm-typed-array") as ShmModule) };
  } catch (e) {
    loaded = { reason: `the native module shm-typed-array is not available (${(e as Error).message.split("\n")[0]})` };
  }
  return loaded;
}
