import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  close,
  closeSync,
  constants,
  fstatSync,
  fsync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  unlink,
  unlinkSync,
  write,
  writeSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { UnsafeHomeError } from "../secure-files.js";
import { sha256InSlices } from "../sliced-hash.js";

const fsyncAsync = promisify(fsync);
const unlinkAsync = promisify(unlink);
const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** The same, open for reading too (an upload's partial file is read back to be hashed). */
const CREATE_NEW_RW = (CREATE_NEW & ~constants.O_WRONLY) | constants.O_RDWR;
const READ = constants.O_RDONLY | constants.O_NOFOLLOW;
/**
 * Released bodies one flush removes at most (one WAL sync, then a count and a rename each, ~50 µs):
 * more released between two ticks are flushed a batch a turn, so a burst never holds the thread long.
 */
export const RELEASE_BATCH = 256;
/**
 * Released bytes past which a flush starts before the tick: a persona that deletes and writes
 * again at once (its quota freed at the delete) holds at most this much disk more than its quota
 * until the bodies go, not what it can write in a tick's 2.5 s.
 */
export const RELEASE_BYTES = 256 * 1024 * 1024;

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
 *
 * A body a change stopped naming is not removed by the request that stopped naming it: it is
 * queued ({@link release}) and the housekeeping tick removes the batch ({@link flushReleased})
 * after one WAL sync for all of it.
 */
export class BlobStore {
  readonly root: string;
  private readonly tmpDir: string;
  private readonly pins = new Map<string, number>();
  /** Bodies released since the last flush, by hex hash: each goes at the next flush unless named or pinned by then. */
  private readonly released = new Map<string, { hash: Buffer; bytes: number }>();
  private releasedBytes = 0;
  private flushQueued = false;
  /** What the flushes did so far: flushes that had work, the WAL syncs they asked, the bodies they removed. */
  readonly flushed = { flushes: 0, syncs: 0, removed: 0 };
  /** Told of a flush that failed when no caller was there to catch it (one the batch bound started). */
  onFlushError: ((e: unknown) => void) | undefined;

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
      /**
       * Committed rows naming a body, asked when a released body is about to go. Without it (a
       * store no rows name: tests) a released body goes unless a pin holds it.
       */
      named?: (hash: Uint8Array) => number;
      /** Where the ended uploads whose notes stayed are kept (the database): see {@link EndedNotes}. */
      endedNotes?: EndedNotes;
    } = { sync: true },
  ) {
    this.root = root;
    this.tmpDir = join(root, "tmp");
    privateDir(root);
    privateDir(join(root, "sha256"));
    privateDir(this.tmpDir);
    // Temp files are never referenced: what a killed run left there is garbage. Its uploads in
    // progress are told first (the kernel records their end: nothing else would).
    this.notesDir = join(root, "uploads");
    privateDir(this.notesDir);
    const names = readdirSync(this.tmpDir);
    // Notes of uploads that had ended (their removal refused) are not the note's word: the database's.
    const ended = new Set(opts.endedNotes?.marked() ?? []);
    const noteNames = readdirSync(this.notesDir);
    const left = leftUploads(this.tmpDir, names, this.notesDir, noteNames, ended);
    this.leftUploads = left.live;
    this.endedUploadFiles = left.ended;
    // What the file system refuses to remove (EIO) is left, and the start goes on: a kernel that
    // cannot start is everyone's loss, for a few files. A partial file left is garbage the next
    // start removes again (one with no note reads as an ended upload's).
    let refused = 0;
    for (const name of names) if (unlinkRefused(join(this.tmpDir, name))) refused++;
    const notesKept: string[] = [];
    for (const name of noteNames) if (unlinkRefused(join(this.notesDir, name))) notesKept.push(name);
    this.refusedAtStart = refused + notesKept.length;
    // A note left is of an upload ended by now (by a run before, or on the record by this start,
    // as leftUploads): marked so, as removeNote marks one an upload's end could not remove, and
    // tried again with those. The marks of the notes gone go with them.
    if (ended.size || notesKept.length) {
      try {
        opts.endedNotes?.clear();
        for (const id of notesKept) {
          opts.endedNotes?.mark(id);
          if (this.notesLeft.size < LEFT_UPLOADS_MAX) this.notesLeft.add(id);
        }
      } catch {
        // The database fails too: a note left is read as live again, and ended again, at the next start.
      }
    }
  }

  /** Files this start's clean-up of `tmp/` and `uploads/` could not remove (the file system refused): left. */
  readonly refusedAtStart: number;

  /** Notes of whose each upload in progress is (`uploads/<id>`), read by the start after a kill. */
  private readonly notesDir: string;

  /** Uploads a killed run left in progress, found (and removed) by this start: see {@link leftUploads}. */
  readonly leftUploads: LeftUpload[];
  /**
   * Partial files this start removed whose uploads had ended (no note: committed or aborted, on
   * the record, their files kept by a failing disk) — not ended again on the record.
   */
  readonly endedUploadFiles: number;

  pathOf(hash: Uint8Array): string {
    const hex = Buffer.from(hash).toString("hex");
    return join(this.root, "sha256", hex.slice(0, 2), hex.slice(2));
  }

  /** A new temp file (0600, created exclusively): its descriptor, open for writing (and reading: `read`), and path. */
  createTemp(prefix: string, read = false, name?: string): { fd: number; path: string } {
    const path = join(this.tmpDir, name ?? `${prefix}-${randomBytes(12).toString("hex")}`);
    return { fd: openSync(path, read ? CREATE_NEW_RW : CREATE_NEW, 0o600), path };
  }

  /**
   * A small note of whose an upload in progress is (`uploads/<id>`), for the next start should the
   * kernel be killed with it in place. The note is what says the upload was live: its end removes
   * it first, and a partial file with none is one whose upload had ended (its file left by a
   * failing disk). Throws when it cannot be written (no room, the file system fails): the upload
   * is not begun then — it could not have stored its bytes either.
   */
  writeNote(id: string, text: string): void {
    const path = join(this.notesDir, id);
    const fd = openSync(path, CREATE_NEW, 0o600);
    try {
      writeSync(fd, text);
    } catch (e) {
      unlinkQuiet(path);
      throw e;
    } finally {
      closeQuiet(fd);
    }
  }

  /**
   * Removes a note of {@link writeNote} (none there is fine). On the thread, before the upload's
   * end goes on: a note is what the next start ends an upload by — its partial file may be gone
   * (installed, or read for an inline commit) while it is in progress — so one left behind by a
   * removal still queued at a kill would end a committed upload again on the record.
   */
  removeNote(id: string): void {
    try {
      unlinkSync(join(this.notesDir, id));
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    }
    // The file system refused (EIO): left, the note would tell the next start the upload was live
    // — a committed one's as a commit that did not complete. Tried again ({@link removeLeftNotes}),
    // and its end is kept in the database, which the next start asks before the note (a kill, or
    // a stop, while the removal is still refused).
    if (this.notesLeft.size < LEFT_UPLOADS_MAX) this.notesLeft.add(id);
    try {
      this.opts.endedNotes?.mark(id);
    } catch {
      // The database fails too: the note is read as before (an end recorded for it at the next start).
    }
  }

  /** Notes of ended uploads whose removal the file system refused: tried again. */
  private readonly notesLeft = new Set<string>();

  /**
   * Tries again to remove the notes of ended uploads whose removal failed (the uploads' timer, and
   * the table's close at a stop); answers how many are still left.
   */
  removeLeftNotes(): number {
    for (const id of this.notesLeft) {
      try {
        unlinkSync(join(this.notesDir, id));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") continue;
      }
      this.notesLeft.delete(id);
      try {
        this.opts.endedNotes?.unmark(id);
      } catch {
        // Left for the next start, which clears every mark once the notes are gone.
      }
    }
    return this.notesLeft.size;
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
      await this.removeTemp(t.path);
      // Waited for: the caller may reuse the body's memory once this settles (releasesArgs).
      await stored.then(
        () => closeQuiet(t.fd),
        () => closeQuiet(t.fd),
      );
      throw e;
    }
    this.pin(hash);
    let installing = false;
    try {
      try {
        await stored;
      } catch (e) {
        closeQuiet(t.fd);
        await this.removeTemp(t.path);
        throw e;
      }
      closeSync(t.fd);
      installing = true;
      await this.install(t.path, hash);
    } catch (e) {
      this.unpin(hash);
      if (installing) {
        // The install failed (no room for the address's directory, a failed sync): the temp file
        // goes now, not at the next start — on a full disk each such write left up to a frame
        // of it, charged to no one — and a body the rename did install is freed unless named.
        await this.removeTemp(t.path);
        this.release(hash, data.length);
      }
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
    // A body there already (anyone's object may name these bytes) is given a second name first,
    // so that the rename over it does not free its blocks on this thread: that took ~0.45 s a GiB
    // (a stall for every session) and made the write of bytes someone stores slower than of new
    // ones (a confirm-a-file probe). The link costs microseconds either way; the old file is
    // freed off the event loop.
    const old = this.gonePath();
    let linked = false;
    try {
      linkSync(dest, old);
      linked = true;
    } catch {
      // None there (ENOENT); or no second name could be made (no room for it): the rename then
      // frees the old file here, as it did before, rather than failing the write.
    }
    try {
      // Atomic: a reader opens the old body or the new one (each read opens the file anew).
      renameSync(tempPath, dest);
    } finally {
      if (linked) unlink(old, () => {});
    }
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

  /**
   * `length` bytes from `offset` of a body its row says has `size` bytes. A body missing or of
   * another size on disk is a {@link DamagedBodyError}, never a short answer or bytes of a body
   * other than the one recorded.
   */
  read(hash: Uint8Array, offset: number, length: number, size: number): Buffer {
    let fd: number;
    try {
      fd = openSync(this.pathOf(hash), READ);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") throw new DamagedBodyError(hash, size, null);
      throw e;
    }
    try {
      const found = fstatSync(fd).size;
      if (found !== size) throw new DamagedBodyError(hash, size, found);
      const out = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const n = readSync(fd, out, got, length - got, offset + got);
        // Cut while it was read.
        if (n === 0) throw new DamagedBodyError(hash, size, offset + got);
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
   * A committed change stopped naming `hash`, a body of `bytes` (a delete, an overwrite, a write
   * or upload that did not happen): the body goes at the next {@link flushReleased} unless a row or a pin names it
   * by then. Nothing else is done here — no WAL sync, no look at the disk or at who else names
   * the bytes — so the request's time says nothing about whether anyone else (any persona, any
   * workspace) stores exactly these bytes (security.md cases 156 and 508), and a persona deleting
   * large objects at its rate does not stall the kernel's one thread for a disk sync each.
   */
  release(hash: Uint8Array, bytes: number): void {
    const k = Buffer.from(hash).toString("hex");
    if (!this.released.has(k)) {
      this.released.set(k, { hash: Buffer.from(hash), bytes });
      this.releasedBytes += bytes;
    }
    // A burst between ticks is flushed in batches, each in a turn of its own, not in the request's.
    if ((this.released.size >= RELEASE_BATCH || this.releasedBytes >= RELEASE_BYTES) && !this.flushQueued) this.queueFlush();
  }

  /** Bodies released and not yet flushed. */
  get pendingReleases(): number {
    return this.released.size;
  }

  /**
   * Removes the bodies released since the last flush (up to {@link RELEASE_BATCH} of them; the
   * rest in the next turn) that no committed row and no pin names now: one WAL sync first, for
   * the whole batch, whether or not any body goes. Returns how many went.
   *
   * Why the sync comes first: the database commits with synchronous=NORMAL, so a power loss can
   * roll back commits the WAL holds but has not synced — among them the one that stopped naming a
   * body. Were the body removed first, the rolled-back row would name a file that is gone. Every
   * commit that released a body of this batch came before the flush, so the sync covers them
   * all; the names are counted after it, in the same turn, so no commit comes between the sync
   * and the count, and a row that names the bytes again (a write of the same content since the
   * release) or a pin (a write or upload in progress) keeps the body. A crash before the flush
   * leaves the body unnamed on disk, never a row without its body: the next start's
   * {@link sweep} removes it. A sync that fails leaves the batch's bodies for that sweep too (a
   * second sync could pass with the WAL's pages lost), as does a removal that fails; either throws.
   */
  flushReleased(): number {
    if (this.released.size === 0) return 0;
    const batch: Buffer[] = [];
    for (const [k, r] of this.released) {
      batch.push(r.hash);
      this.releasedBytes -= r.bytes;
      this.released.delete(k);
      if (batch.length >= RELEASE_BATCH) break;
    }
    if (this.released.size > 0 && !this.flushQueued) this.queueFlush();
    this.flushed.flushes++;
    if (this.opts.durable) {
      this.flushed.syncs++;
      this.opts.durable();
    }
    let removed = 0;
    let failed: unknown;
    for (const h of batch) {
      if ((this.opts.named?.(h) ?? 0) > 0 || this.pins.has(h.toString("hex"))) continue;
      try {
        if (this.remove(h)) removed++;
      } catch (e) {
        // This body stays, unnamed, for the next start's sweep; the others of the batch still go.
        failed ??= e;
      }
    }
    this.flushed.removed += removed;
    if (failed !== undefined) throw failed;
    return removed;
  }

  /** The next batch, in a turn of its own: a failure there has no caller, so it goes to {@link onFlushError}. */
  private queueFlush(): void {
    this.flushQueued = true;
    setImmediate(() => {
      this.flushQueued = false;
      try {
        this.flushReleased();
      } catch (e) {
        this.onFlushError?.(e);
      }
    });
  }

  /** Moves a body no row names out of its address (made durable before), and frees it off the event loop. */
  private remove(hash: Uint8Array): boolean {
    return this.discard(this.pathOf(hash));
  }

  /**
   * Takes a file of the store (a body, a temp or partial file) out of its place at once and frees
   * its blocks off the event loop. Dropping the last name of a large file on the kernel's thread
   * (an unlink, or the close of an unlinked file) costs ~0.45 s a GiB of page-cache and extent
   * work, which every session waits out: an upload of gigabytes then aborted stalled the kernel.
   * Its descriptor, if any, must be closed off the thread too ({@link closeQuiet}). False: no file there.
   * Throws only when the file can be neither moved nor removed.
   */
  discard(path: string): boolean {
    const gone = this.gonePath();
    try {
      renameSync(path, gone);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
      // Not moved (EIO; a full disk refusing the new name): unlinked on the thread, as before the
      // move. A caller that cannot fail (an upload's abort) is never left with the file in place.
      try {
        unlinkSync(path);
      } catch (u) {
        if ((u as NodeJS.ErrnoException).code === "ENOENT") return false;
        throw u;
      }
      return true;
    }
    unlink(gone, () => {});
    return true;
  }

  /**
   * Removes a temp file off the event loop, settled once it is gone. Never throws: none there is
   * fine, and one that cannot be removed goes at the next start (the caller's own failure stands).
   */
  private async removeTemp(path: string): Promise<void> {
    await unlinkAsync(path).catch(() => {});
  }

  /** A fresh name in tmp/ for a file being freed (a start empties tmp/, should the kernel die first). */
  private gonePath(): string {
    return join(this.tmpDir, `gone-${randomBytes(12).toString("hex")}`);
  }

  /**
   * At start, before any request: checks every directory and file of the store (no links, the
   * kernel's own, no group or other access) and removes the bodies no row names (left by a
   * crash between writing a body and committing its row, or between a delete and the removal).
   * `recorded` is the size the rows naming a body give it (undefined: none names it); a named
   * body of another size on disk is in `damaged` (its size from the lstat the walk makes anyway).
   */
  sweep(recorded: (hash: Buffer) => number | undefined): { removed: number; named: number; damaged: DamagedBodyError[] } {
    let removed = 0;
    let named = 0;
    const damaged: DamagedBodyError[] = [];
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
        const size = /^[0-9a-f]{64}$/.test(hex) ? recorded(Buffer.from(hex, "hex")) : undefined;
        if (size === undefined) {
          if (unlinkQuiet(path)) removed++;
          continue;
        }
        named++;
        if (st.size !== size) damaged.push(new DamagedBodyError(Buffer.from(hex, "hex"), size, st.size));
      }
    }
    return { removed, named, damaged };
  }
}

/**
 * A body in the file store that is not what the rows naming it say: missing, or of another size
 * (a bad disk, a file cut or replaced by a process of the kernel's user). Its bytes are lost to
 * every object naming it until the operator restores the file.
 */
export class DamagedBodyError extends Error {
  override name = "DamagedBodyError";
  readonly hash: Buffer;
  constructor(
    hash: Uint8Array,
    /** What the rows naming it say. */
    readonly size: number,
    /** Its size on disk; null when the file is missing. */
    readonly found: number | null,
  ) {
    const hex = Buffer.from(hash).toString("hex");
    super(
      found === null
        ? `object body ${hex} (${size} bytes) is missing from the file store`
        : `object body ${hex} has ${found} bytes on disk, not the ${size} its objects record`,
    );
    this.hash = Buffer.from(hash);
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

/**
 * Closes a descriptor off the event loop: if its file was unlinked, the close is what frees the
 * blocks (see {@link BlobStore.discard}). The number stays taken until the close is done.
 */
export function closeQuiet(fd: number): void {
  close(fd, () => {});
}

/** Removes `path`; true when the file system refused (an error other than its absence): the file stays. */
function unlinkRefused(path: string): boolean {
  try {
    unlinkSync(path);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== "ENOENT";
  }
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

/**
 * The uploads that ended but whose notes the file system refused to remove, kept in the database
 * (SqliteBase.markEndedUploadNote): a note alone cannot tell a committed (or aborted) upload from
 * one whose commit did not complete, since the note is what says an upload was live.
 */
export interface EndedNotes {
  mark(id: string): void;
  unmark(id: string): void;
  marked(): string[];
  clear(): void;
}

/** An upload in progress when the previous kernel was killed: its id, the bytes its partial file held, and its note. */
export interface LeftUpload {
  id: string;
  bytes: number;
  /** Its partial file had gone (moved to its address, or read): it was being committed, or kept after a refused commit. */
  committing?: boolean;
  /** From its note: whose it was, on which target, its declared size, when it began. */
  persona?: string;
  target?: string;
  size?: number;
  began?: number;
}

/** An upload's partial file is named for its id (`upload-u-<32 hex>`), its note `uploads/u-<32 hex>`. */
const UPLOAD_FILE = /^upload-(u-[0-9a-f]{32})$/;
const NOTE_NAME = /^u-[0-9a-f]{32}$/;
/** At most this many are told (the uploads one run holds are bounded far below). */
const LEFT_UPLOADS_MAX = 4096;
const NOTE_MAX_BYTES = 16 * 1024;

/**
 * The partial files of uploads in `tmp` (its entries `names`) whose notes (in `notes`, its entries `noted`) say they were live, with
 * what the notes say; and how many had no note (their uploads ended: see {@link BlobStore.writeNote}).
 */
function leftUploads(
  tmp: string,
  names: string[],
  notes: string,
  noted: string[],
  endedNotes: ReadonlySet<string>,
): { live: LeftUpload[]; ended: number } {
  const out: LeftUpload[] = [];
  let ended = 0;
  // One buffer for every note read (up to LEFT_UPLOADS_MAX of them at a start).
  const buf = Buffer.alloc(NOTE_MAX_BYTES);
  const withFile = new Set<string>();
  for (const name of names) {
    const m = UPLOAD_FILE.exec(name);
    if (!m?.[1]) continue;
    if (out.length >= LEFT_UPLOADS_MAX) break;
    let bytes: number;
    try {
      const st = lstatSync(join(tmp, name));
      if (!st.isFile()) continue;
      bytes = st.size;
    } catch {
      continue;
    }
    withFile.add(m[1]);
    const note = endedNotes.has(m[1]) ? null : readNote(join(notes, m[1]), buf);
    if (note === null) ended++;
    else out.push({ id: m[1], bytes, ...note });
  }
  // A note without its partial file: an upload in progress past its commit's first step — its
  // body moved to its address, or its bytes (under the inline size) read — whose commit had not
  // completed, or was refused and the upload kept for a retry. A commit needs every declared byte.
  for (const id of noted) {
    if (out.length >= LEFT_UPLOADS_MAX) break;
    if (!NOTE_NAME.test(id) || withFile.has(id) || endedNotes.has(id)) continue;
    const note = readNote(join(notes, id), buf);
    if (note !== null) out.push({ id, bytes: note.size ?? 0, committing: true, ...note });
  }
  return { live: out, ended };
}

/** What an upload's note says; null when there is none (an unreadable one still says the upload was live). */
function readNote(path: string, buf: Buffer): Pick<LeftUpload, "persona" | "target" | "size" | "began"> | null {
  let fd: number;
  try {
    fd = openSync(path, READ);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    return {};
  }
  try {
    const n = readSync(fd, buf, 0, buf.length, 0);
    const v = JSON.parse(buf.subarray(0, n).toString("utf8")) as Record<string, unknown>;
    return {
      ...(typeof v.persona === "string" ? { persona: v.persona } : {}),
      ...(typeof v.target === "string" ? { target: v.target } : {}),
      ...(typeof v.size === "number" ? { size: v.size } : {}),
      ...(typeof v.began === "number" ? { began: v.began } : {}),
    };
  } catch {
    return {};
  } finally {
    closeQuiet(fd);
  }
}
