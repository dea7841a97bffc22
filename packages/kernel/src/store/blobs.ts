import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  constants,
  existsSync,
  fsync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  unlink,
  unlinkSync,
  write,
} from "node:fs";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { UnsafeHomeError } from "../secure-files.js";
import { sha256InSlices } from "../sliced-hash.js";

const fsyncAsync = promisify(fsync);
const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** The same, open for reading too (an upload's partial file is read back to be hashed). */
const CREATE_NEW_RW = (CREATE_NEW & ~constants.O_WRONLY) | constants.O_RDWR;
const READ = constants.O_RDONLY | constants.O_NOFOLLOW;

/** Writes all of `data` to `fd` at `position`, off the event loop (libuv's threads). */
export function writeAt(fd: number, data: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (off: number) =>
      write(fd, data, off, data.length - off, position + off, (err, n) => {
        if (err) reject(err);
        else if (off + n < data.length) step(off + n);
        else resolve();
      });
    step(0);
  });
}

/** SHA-256 of `data`, the address of a body in the store. */
export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

/**
 * Object bodies as files, addressed by their SHA-256: `<root>/sha256/ab/cdef…` (0600 files in
 * 0700 directories, never through a link). A body is written once into `<root>/tmp/`, synced,
 * then renamed to its address (over a body there already, atomically), so a reader never sees
 * a partial body. Metadata (which object names which body) lives in the store's database;
 * a body becomes visible only when a committed row names it, and is removed only after the
 * last row naming it is gone. A crash between the two leaves an unreferenced body (or a temp
 * file), never a row without its body: {@link sweep} at start removes them.
 *
 * Bodies being written or committed are pinned, so removing an unreferenced body never races
 * a write that is about to reference the same content.
 */
export class BlobStore {
  readonly root: string;
  private readonly tmpDir: string;
  private readonly pins = new Map<string, number>();

  constructor(
    root: string,
    private readonly opts: {
      sync: boolean;
      /**
       * Makes every committed change of the database durable (an fsync of its WAL). Called before
       * a body leaves its address: the database commits with synchronous=NORMAL, so without it a
       * power loss could roll back the commit that stopped naming the body, after the body was gone.
       */
      durable?: () => void;
    } = { sync: true },
  ) {
    this.root = root;
    this.tmpDir = join(root, "tmp");
    privateDir(root);
    privateDir(join(root, "sha256"));
    privateDir(this.tmpDir);
    // Temp files are never referenced: what a killed run left there is garbage.
    for (const name of readdirSync(this.tmpDir)) unlinkQuiet(join(this.tmpDir, name));
  }

  pathOf(hash: Uint8Array): string {
    const hex = Buffer.from(hash).toString("hex");
    return join(this.root, "sha256", hex.slice(0, 2), hex.slice(2));
  }

  /** A new temp file (0600, created exclusively): its descriptor, open for writing (and reading: `read`), and path. */
  createTemp(prefix: string, read = false): { fd: number; path: string } {
    const path = join(this.tmpDir, `${prefix}-${randomBytes(12).toString("hex")}`);
    return { fd: openSync(path, read ? CREATE_NEW_RW : CREATE_NEW, 0o600), path };
  }

  /** Flushes a temp file's bytes to disk when the kernel syncs bodies (before their metadata commits). */
  async syncFile(fd: number): Promise<void> {
    if (this.opts.sync) await fsyncAsync(fd);
  }

  /**
   * Stores `data` (hashed here, once) and returns its hash, pinned: the caller commits the row
   * naming it, then calls {@link unpin}.
   *
   * The bytes go to a temp file and are synced on libuv's threads while this thread hashes them
   * in slices, yielding between slices: the sync starts as soon as the write is done, the passes
   * over the body overlap instead of following each other, and other sessions are served
   * meanwhile. Only when the bytes are synced is the file renamed to its address.
   *
   * The bytes are written and synced even when their body is there already: skipping the work
   * would let a write's latency tell a persona that someone else stored exactly those bytes (a
   * confirm-a-file probe). The deduplication of the space is kept; only the I/O is not saved.
   */
  async put(data: Uint8Array): Promise<Buffer> {
    const t = this.createTemp("put");
    const stored = writeAt(t.fd, data, 0).then(() => this.syncFile(t.fd));
    // Awaited below; a failure while this thread hashes is not an unhandled rejection meanwhile.
    stored.catch(() => {});
    let hash: Buffer;
    try {
      hash = await this.hashBody(data);
    } catch (e) {
      // Nothing will name the temp file: it goes now, not at the next start. Its descriptor is
      // closed only once the write is done with it (a number closed early could be reused by
      // another file, which the pending write would then write into).
      unlinkQuiet(t.path);
      // Waited for: the caller may reuse the body's memory once this settles (releasesArgs).
      await stored.then(
        () => closeSync(t.fd),
        () => closeSync(t.fd),
      );
      throw e;
    }
    this.pin(hash);
    try {
      try {
        await stored;
      } catch (e) {
        closeSync(t.fd);
        unlinkQuiet(t.path);
        throw e;
      }
      closeSync(t.fd);
      await this.install(t.path, hash);
    } catch (e) {
      this.unpin(hash);
      throw e;
    }
    return hash;
  }

  /** The body's address: its SHA-256, a slice per turn of the event loop. */
  protected hashBody(data: Uint8Array): Promise<Buffer> {
    return sha256InSlices(data);
  }

  /**
   * Moves a complete, synced temp file to `hash`'s address, also over a body there already: these
   * bytes were just hashed, what is at the address may have changed on disk since (kept, it was
   * what the new object — and the answer's SHA-256 — named). The directory is synced, and the two
   * cases cost the same.
   */
  async install(tempPath: string, hash: Uint8Array): Promise<void> {
    const dest = this.pathOf(hash);
    privateDir(dirname(dest));
    // Atomic: a reader opens the old body or the new one (each read opens the file anew).
    renameSync(tempPath, dest);
    // The new name must outlive an OS crash as long as the row naming it does.
    if (this.opts.sync) {
      const dfd = openSync(dirname(dest), constants.O_RDONLY | constants.O_DIRECTORY);
      try {
        await fsyncAsync(dfd);
      } finally {
        closeSync(dfd);
      }
    }
  }

  has(hash: Uint8Array): boolean {
    try {
      return lstatSync(this.pathOf(hash)).isFile();
    } catch {
      return false;
    }
  }

  /** `length` bytes of a body from `offset`; a body shorter than that is an error, never a short answer. */
  read(hash: Uint8Array, offset: number, length: number): Buffer {
    const fd = openSync(this.pathOf(hash), READ);
    try {
      const out = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const n = readSync(fd, out, got, length - got, offset + got);
        if (n === 0) throw new Error(`object body ${Buffer.from(hash).toString("hex")} is shorter than its metadata says`);
        got += n;
      }
      return out;
    } finally {
      closeSync(fd);
    }
  }

  pin(hash: Uint8Array): void {
    const k = Buffer.from(hash).toString("hex");
    this.pins.set(k, (this.pins.get(k) ?? 0) + 1);
  }

  unpin(hash: Uint8Array): void {
    const k = Buffer.from(hash).toString("hex");
    const n = (this.pins.get(k) ?? 1) - 1;
    if (n <= 0) this.pins.delete(k);
    else this.pins.set(k, n);
  }

  /**
   * Removes a body once nothing names it: `refs` = committed rows naming it, counted after the
   * change committed. The body leaves its address at once (a rename into tmp/), and the file is
   * freed off the event loop: unlinking a large file costs milliseconds of page-cache work.
   */
  collect(hash: Uint8Array, refs: number): boolean {
    if (refs > 0 || this.pins.has(Buffer.from(hash).toString("hex"))) return false;
    if (!existsSync(this.pathOf(hash))) return false;
    this.opts.durable?.();
    return this.remove(hash);
  }

  /**
   * A committed change stopped naming `hash` (a delete, an overwrite, a write or upload that did
   * not happen): as {@link collect}, but the database is made durable whether or not the body
   * goes. Whether it goes says whether anyone else — any persona, any workspace — names exactly
   * these bytes; a sync only when it does was a confirm-a-file oracle in the request's time
   * (write guessed bytes, delete them, time the delete), as {@link put} is not (case 156).
   */
  release(hash: Uint8Array, refs: number): boolean {
    this.opts.durable?.();
    if (refs > 0 || this.pins.has(Buffer.from(hash).toString("hex"))) return false;
    if (!existsSync(this.pathOf(hash))) return false;
    return this.remove(hash);
  }

  /** Moves a body no row names out of its address (made durable before), and frees it off the event loop. */
  private remove(hash: Uint8Array): boolean {
    const gone = join(this.tmpDir, `gone-${randomBytes(12).toString("hex")}`);
    try {
      renameSync(this.pathOf(hash), gone);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw e;
    }
    unlink(gone, () => {});
    return true;
  }

  /**
   * At start, before any request: checks every directory and file of the store (no links, the
   * kernel's own, no group or other access) and removes the bodies no row names (left by a
   * crash between writing a body and committing its row, or between a delete and the removal).
   */
  sweep(referenced: (hash: Buffer) => boolean): number {
    let removed = 0;
    const top = join(this.root, "sha256");
    for (const a of readdirSync(top)) {
      const dir = join(top, a);
      privateDir(dir);
      for (const b of readdirSync(dir)) {
        const path = join(dir, b);
        const st = lstatSync(path);
        if (!st.isFile()) throw new UnsafeHomeError(`${path} is not a regular file; the object store holds only bodies`);
        owned(st.uid, path);
        if ((st.mode & 0o077) !== 0) chmodSync(path, 0o600);
        const hex = a + b;
        if (!/^[0-9a-f]{64}$/.test(hex) || !referenced(Buffer.from(hex, "hex"))) {
          if (unlinkQuiet(path)) removed++;
        }
      }
    }
    return removed;
  }
}

function owned(uid: number, what: string): void {
  const me = process.getuid?.();
  if (me !== undefined && uid !== me)
    throw new UnsafeHomeError(`${what} belongs to uid ${uid}, not to the kernel's user (uid ${me}); refusing to use it`);
}

/** Creates a 0700 directory, or checks an existing one: a real directory, the kernel user's, no group/other access. */
function privateDir(path: string): void {
  try {
    mkdirSync(path, { mode: 0o700 });
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  const st = lstatSync(path);
  if (st.isSymbolicLink() || !st.isDirectory())
    throw new UnsafeHomeError(`${path} is not a directory (a link or something else was put there)`);
  owned(st.uid, path);
  if ((st.mode & 0o077) !== 0) chmodSync(path, 0o700);
}

export function unlinkQuiet(path: string): boolean {
  try {
    unlinkSync(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  }
}
