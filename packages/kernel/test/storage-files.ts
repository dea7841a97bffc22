import { createHash } from "node:crypto";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import type { Kernel } from "../src/kernel.js";
import { BlobStore } from "../src/store/blobs.js";

/** The large-object tests' shared bytes and file-store views (storage-bulk, storage-restart). */
export const MiB = 1024 * 1024;
/** Frames of 1 MiB keep the suite fast; an object of 17 MiB is still larger than the default 16 MiB frame. */
export const SMALL_FRAMES = { maxBodyBytes: MiB, maxObjectBytes: 64 * MiB };

/** Deterministic bytes that differ at every offset (a misplaced chunk shows). */
export function pattern(size: number, seed = 1): Buffer {
  const b = Buffer.allocUnsafe(size + 4);
  let x = seed;
  for (let i = 0; i < size; i += 4) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b.writeUInt32LE(x, i);
  }
  return b.subarray(0, size);
}
export const sha = (b: Uint8Array) => createHash("sha256").update(b).digest();
/** Partial files (bodies being freed, `gone-*`, are not partial: they leave off the event loop). */
export const tmpFiles = (home: string) => readdirSync(join(home, "objects", "tmp")).filter((n) => !n.startsWith("gone-"));
/** Every body file in the store, by hex hash. */
export function bodies(home: string): string[] {
  const top = join(home, "objects", "sha256");
  return readdirSync(top).flatMap((a) => readdirSync(join(top, a)).map((b) => a + b));
}

/** Removes now the bodies changes released (they go at the housekeeping tick, not in the request that released them). */
export function flushReleased(k: Kernel): number {
  const blobs = (k as unknown as { services: { blobs: BlobStore } }).services.blobs;
  let n = 0;
  while (blobs.pendingReleases > 0) n += blobs.flushReleased();
  return n;
}

/** Counts the file store's puts (a body written and synced); `gate`, when set, holds each put until it resolves. */
export function watchPuts(): { n: number; gate?: Promise<void>; restore(): void } {
  const put = BlobStore.prototype.put;
  const seen: { n: number; gate?: Promise<void>; restore(): void } = {
    n: 0,
    restore: () => {
      BlobStore.prototype.put = put;
    },
  };
  BlobStore.prototype.put = async function (this: BlobStore, data: Uint8Array) {
    seen.n++;
    if (seen.gate) await seen.gate;
    return put.call(this, data);
  };
  return seen;
}
