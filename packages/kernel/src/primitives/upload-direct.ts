import { randomBytes } from "node:crypto";
import { constants, openSync, write } from "node:fs";
import { open, unlink } from "node:fs/promises";
import { join } from "node:path";

/**
 * The alignment a direct write needs of its file offset, its length and its memory: 4 KiB covers
 * every logical block size Linux file systems use (512 B or 4 KiB).
 */
export const DIRECT_ALIGN = 4096;
/** Bytes of one staging slot: a chunk larger than this is written through the page cache. */
export const DIRECT_SLOT_BYTES = 8 * 1024 * 1024;
/** Slots at most: chunks beyond them (many uploads at once) are written through the page cache. */
const DIRECT_SLOTS = 4;

/** One staging slot: aligned shared memory a chunk is copied into, written from and hashed from. */
export interface DirectSlot {
  /** The slot's bytes (a view of shared memory the hash worker reads too). */
  view: Uint8Array;
  /** Copies `data` to the slot's start; the view of the bytes copied. */
  fill(data: Uint8Array): Uint8Array;
  /** Gives the slot back (once the write and the hash that read it are done). */
  release(): void;
}

/**
 * Direct I/O (`O_DIRECT`) for upload chunks. On this VM the page cache's first touch of each
 * page costs more than every hash of the bytes (round twenty-one, BENCHMARKS.md): a chunk copied
 * into an aligned, reused slot of shared memory and written from there never enters the page
 * cache, and the hash worker reads the slot instead of the file. Where the file system refuses
 * `O_DIRECT` (tmpfs, some FUSE) or a chunk is not aligned, chunks take the page cache as before.
 */
export class DirectChunks {
  /** Undefined until probed; false once direct writes are known not to work here. */
  private misalign: number | false | undefined;
  /** Settles once the probe is done (uploads begun before it use the page cache). */
  readonly ready: Promise<void>;
  private readonly free: DirectSlot[] = [];
  private made = 0;
  /**
   * Unshared memory aligned as the slots are: a copy into shared memory from bytes aligned
   * differently goes byte by byte (relaxed atomics, ~6× a memcpy here), from here word by word.
   */
  private scratch: Uint8Array | undefined;

  constructor(dir: string) {
    // Off the event loop: the probe's one write goes to the disk, which may be slow to answer.
    this.ready = probe(dir).then(
      (m) => {
        this.misalign = m;
      },
      () => {
        this.misalign = false;
      },
    );
  }

  /** A descriptor writing `path` directly, or undefined where direct I/O is not available (or not known yet). */
  open(path: string): number | undefined {
    if (typeof this.misalign !== "number") return undefined;
    try {
      return openSync(path, constants.O_WRONLY | constants.O_DIRECT | constants.O_NOFOLLOW);
    } catch {
      return undefined;
    }
  }

  /** A free slot for a chunk of `length` bytes at `offset`, or undefined (the page cache takes it). */
  take(offset: number, length: number): DirectSlot | undefined {
    if (offset % DIRECT_ALIGN !== 0 || length % DIRECT_ALIGN !== 0 || length > DIRECT_SLOT_BYTES) return undefined;
    const s = this.free.pop() ?? this.make();
    return s;
  }

  private make(): DirectSlot | undefined {
    if (this.made >= DIRECT_SLOTS || typeof this.misalign !== "number") return undefined;
    this.made++;
    const at = this.misalign;
    const view = new Uint8Array(new SharedArrayBuffer(DIRECT_SLOT_BYTES + DIRECT_ALIGN), at, DIRECT_SLOT_BYTES);
    const slot: DirectSlot = {
      view,
      fill: (data) => {
        this.scratch ??= new Uint8Array(new ArrayBuffer(DIRECT_SLOT_BYTES + DIRECT_ALIGN), at, DIRECT_SLOT_BYTES);
        const part = this.scratch.subarray(0, data.length);
        part.set(data);
        const out = view.subarray(0, data.length);
        out.set(part);
        return out;
      },
      release: () => this.free.push(slot),
    };
    return slot;
  }
}

/**
 * Whether direct writes work in `dir`, and at which offset into a fresh shared buffer their memory
 * is aligned: JavaScript cannot see an address, so the first offset a direct write accepts is it
 * (false where none is). Allocations of a slot's size are page-aligned plus a fixed header, the
 * same for every buffer of the process, so one probe serves every slot (a write refused later
 * anyway goes through the page cache). The file is named as the store's files on their way out.
 */
async function probe(dir: string): Promise<number | false> {
  const path = join(dir, `gone-direct-probe-${randomBytes(8).toString("hex")}`);
  const flags = constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT | constants.O_NOFOLLOW;
  const f = await open(path, flags, 0o600).catch(() => undefined);
  if (f === undefined) return false;
  try {
    const buf = new SharedArrayBuffer(DIRECT_SLOT_BYTES + DIRECT_ALIGN);
    for (let o = 0; o < DIRECT_ALIGN; o += 16) {
      try {
        await f.write(new Uint8Array(buf, o, DIRECT_ALIGN), 0, DIRECT_ALIGN, 0);
        return o;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EINVAL") return false;
      }
    }
    return false;
  } finally {
    await f.close().catch(() => {});
    // A leftover probe file goes with the temp directory at the next start.
    await unlink(path).catch(() => {});
  }
}

/** Writes all of `data` to the direct descriptor `fd` at `position` (one write: aligned, whole). */
export function writeDirect(fd: number, data: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (off: number) =>
      write(fd, data, off, data.length - off, position + off, (err, n) => {
        if (err) reject(err);
        else if (n === 0) reject(new Error(`a direct write at ${position + off} wrote nothing`));
        else if (off + n < data.length) step(off + n);
        else resolve();
      });
    step(0);
  });
}
