import { readdirSync, unlinkSync } from "node:fs";
import type { ShmNative } from "@kpip/protocol";
import { loadFileShm } from "@kpip/protocol/shm-files";

let loaded: { native?: ShmNative; reason?: string } | undefined;

/**
 * POSIX shared memory as the kernel reaches it: each segment's file in /dev/shm, read and
 * written with pread/pwrite, never mapped (`@kpip/protocol/shm-files`: a peer that shrinks its
 * segment causes a short read, not a SIGBUS in the kernel). Without /dev/shm — or with
 * KPIP_SHM=off — sessions simply never negotiate "shm"; `reason` says why, for the one log line.
 */
export function loadShmNative(dir = "/dev/shm"): { native?: ShmNative; reason?: string } {
  loaded ??= loadFileShm(dir);
  return loaded;
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
