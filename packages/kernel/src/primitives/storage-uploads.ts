import { randomBytes } from "node:crypto";
import { fdatasync, truncate } from "node:fs";
import type { Grant } from "@kpip/protocol";
import { FIRST_SEGMENT, inTree, type TreeRoots, treeBoundRefusal } from "../resources/lineage.js";
import { reservedFrom } from "../sandbox/processes.js";
import type { BlobStore } from "../store/blobs.js";
import { closeQuiet, writeAt } from "../store/blobs.js";
import { OpError } from "./types.js";
import { UploadHasher } from "./upload-hasher.js";

export interface UploadLimits {
  /** Uploads in progress one persona may have (with every persona under it). */
  perPersona: number;
  /** Uploads in progress in the kernel. */
  total: number;
  /** Declared bytes of all uploads in progress in the kernel (the disk they may fill). */
  totalBytes: number;
  /** Declared bytes of one persona tree's uploads in progress: no tree holds all of totalBytes. Unbounded when absent. */
  bytesPerPersona?: number;
  /** An upload with no chunk or commit for this long is discarded with its partial file. */
  idleMs: number;
  /**
   * The admin persona, exempt from the tree's shares, and the uploads it alone may take: the last
   * `adminReserve` of `total`, and as large a part of `totalBytes` (adminReserve / total of it).
   */
  admin?: string;
  adminReserve?: number;
  /** The top of each persona's tree (perPersona counts it); by first segment when absent. */
  roots?: TreeRoots;
}

/** One chunked upload in progress: the object it will become, and its partial body so far. */
export interface Upload {
  id: string;
  persona: string;
  /** When it began (ms): a registration of its persona id made since is another holder's. */
  began: number;
  /** The grant that allowed its begin: revoked (or covered by a revocation), the upload is dropped. */
  grant: Grant | undefined;
  /** The target it was begun on: every chunk and the commit must name the same one. */
  target: string;
  size: number;
  received: number;
  /**
   * The object's SHA-256 in progress: each chunk is read back and hashed off the kernel's thread
   * once it is written, in order (see {@link UploadHasher}); this settles after the last range given.
   */
  hashed: Promise<void>;
  /** Bytes and chunks written but not hashed yet (the ack of a chunk waits while these are over the bound). */
  unhashedBytes: number;
  unhashedChunks: number;
  fd: number;
  path: string;
  expires: number;
  /** Set while the commit syncs and installs the body: nothing else may touch the upload. */
  committing: boolean;
  /** Bytes handed to a background flush so far (see {@link UploadTable.chunk}). */
  flushed: number;
  /** Writes and flushes of the partial file in progress. */
  busy: Set<Promise<unknown>>;
  /** The first write that failed (the upload cannot commit). */
  failed: Error | undefined;
  /** The descriptor was given back (or is, once its writes settle). */
  closed: boolean;
  /**
   * The verified body, moved to its address in the store (and pinned there) by a commit that
   * then lost its compare-and-set or quota: a retried commit names it without the bytes again.
   */
  installed: Buffer | undefined;
  /** With {@link installed}: the verified bytes of an upload below the inline size (no body file), kept for that retry. */
  inline?: Buffer;
  /**
   * The grant that began it was revoked, or its persona removed, while a commit was under way
   * (which could not be dropped then): that commit's refusal ends the upload instead of keeping it.
   */
  ended: boolean;
  /** Why the kernel ended it while its commit ran (told to {@link UploadTable.onEnded} when dropped). */
  endedBy?: UploadEnd;
}

/** Dirty bytes of one upload after which its file is flushed in the background. */
const FLUSH_EVERY = 32 * 1024 * 1024;
/**
 * How far an upload's hashing may fall behind its writes before a chunk's acknowledgement waits
 * for it: one hash worker serves every upload (fairly, by persona then upload), so an upload sent
 * faster than it is hashed (or in many tiny chunks) would otherwise queue ranges without bound.
 */
const UNHASHED_BYTES = FLUSH_EVERY;
const UNHASHED_CHUNKS = 64;

/**
 * Uploads in progress (in memory: an upload does not outlive the kernel; its partial file lives
 * in the file store's temp directory, which a start empties). Bounded per persona and in total;
 * an idle upload expires and its partial file is removed.
 */
/** Why the kernel ended an upload its persona neither committed nor aborted. */
export type UploadEnd = "idle" | "revoked" | "key retired" | "persona removed" | "kernel stopped";

export class UploadTable {
  private readonly byId = new Map<string, Upload>();
  /** {@link close} ran: the audit log is closing, so an upload's end is left to the next start (its note). */
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  /** Told of each upload the kernel ends on its own (the kernel puts it on the record). */
  onEnded: ((u: Upload, why: UploadEnd) => void) | undefined;

  constructor(
    private readonly blobs: BlobStore,
    private readonly limits: UploadLimits,
    private readonly clock: () => number = Date.now,
    private readonly hasher: UploadHasher = new UploadHasher(),
    /**
     * The kernel's clock (`KernelOptions.clock`), the one the record's times are on: the note's
     * `began`, which the start after a kill puts on the record. Expiry stays on `clock`, and
     * {@link Upload.began} on the host's (a persona's registration time is).
     */
    private readonly recordClock: () => number = clock,
  ) {
    this.timer = setInterval(
      () => {
        this.expire();
        // Notes of ended uploads the file system refused to remove: tried again (BlobStore.removeNote).
        this.blobs.removeLeftNotes();
      },
      Math.max(50, Math.min(30_000, limits.idleMs / 4)),
    );
    this.timer.unref();
  }

  get size(): number {
    return this.byId.size;
  }

  /** Declared bytes of the uploads in progress that `which` selects (all of them by default). */
  pendingBytes(which: (u: Upload) => boolean = () => true): number {
    let n = 0;
    for (const u of this.byId.values()) if (which(u)) n += u.size;
    return n;
  }

  /**
   * What a workspace's uploads in progress, and those of any persona's tree, have declared (but
   * `except`): counted as used by quotas.
   */
  pendingFor(workspace: string, except?: Upload): { persona: (scope: string) => number; workspace: number } {
    const inWorkspace = `obj://${workspace}/`;
    return {
      persona: (scope) => this.pendingBytes((u) => u !== except && inTree(u.persona, scope)),
      workspace: this.pendingBytes((u) => u !== except && u.target.startsWith(inWorkspace)),
    };
  }

  begin(persona: string, target: string, size: number, grant?: Grant): Upload {
    const { total, totalBytes, admin, adminReserve } = this.limits;
    // The last adminReserve uploads, and as large a part of the bytes, are the admin persona's:
    // a few trees holding declarations open (a byte every idleMs keeps one) leave it room to act.
    const reserved = reservedFrom(persona, total, admin, adminReserve);
    if (this.byId.size >= total - reserved)
      throw new OpError(
        "RESOURCE",
        this.byId.size >= total
          ? `the kernel already has ${this.byId.size} uploads in progress`
          : `the kernel already has ${this.byId.size} uploads in progress: the last ${reserved} of ${total} are reserved for the admin`,
      );
    const reservedBytes = reserved && reservedFrom(persona, totalBytes, admin, Math.floor((totalBytes * reserved) / total));
    const pending = this.pendingBytes();
    if (pending + size > totalBytes - reservedBytes)
      throw new OpError(
        "RESOURCE",
        pending + size > totalBytes
          ? `uploads in progress already declare ${pending} bytes; ${size} more would pass the kernel's ${totalBytes}`
          : `uploads in progress already declare ${pending} bytes; ${size} more would pass the kernel's ${totalBytes} but the last ${reservedBytes}, reserved for the admin`,
      );
    // The admin persona is exempt from the tree's shares (the kernel's bounds still hold).
    if (persona === admin) return this.add(persona, target, size, grant);
    // Counted over the persona's whole tree: its agents and sub-personas get no uploads of their own.
    const root = (this.limits.roots ?? FIRST_SEGMENT).of(persona);
    let mine = 0;
    let mineBytes = 0;
    for (const u of this.byId.values())
      if (inTree(u.persona, root)) {
        mine++;
        mineBytes += u.size;
      }
    if (mine >= this.limits.perPersona)
      throw new OpError(
        "RESOURCE",
        treeBoundRefusal(root, persona, {
          held: (max) => `already has ${mine} uploads in progress (at most ${max})`,
          what: "uploads in progress",
          bound: "maxUploadsPerPersona",
          limit: this.limits.perPersona,
        }),
      );
    // A share of the kernel's bytes per tree: one tree declaring (and trickling a byte to keep) all
    // of totalBytes would refuse every other persona's upload.
    const share = this.limits.bytesPerPersona;
    if (share !== undefined && mineBytes + size > share)
      throw new OpError(
        "RESOURCE",
        treeBoundRefusal(root, persona, {
          held: (max, bound) =>
            `already has uploads in progress declaring ${mineBytes} bytes; ${size} more would pass its share of ${max} (${bound})`,
          what: "bytes declared by uploads in progress",
          bound: "maxUploadBytesPerPersona",
          limit: share,
          asked: size,
        }),
      );
    return this.add(persona, target, size, grant);
  }

  /** A new upload in the table, its partial file created. */
  private add(persona: string, target: string, size: number, grant: Grant | undefined): Upload {
    const id = `u-${randomBytes(16).toString("hex")}`;
    // Named for its id, with a note of whose it is: a start after a kill records its end (BlobStore.leftUploads).
    const t = this.blobs.createTemp("upload", true, `upload-${id}`);
    try {
      this.blobs.writeNote(id, JSON.stringify({ persona, target, size, began: this.recordClock() }));
    } catch (e) {
      // Without its note the upload could not be told live after a kill: not begun (no room for a
      // note is none for its bytes either). Its empty file goes now.
      closeQuiet(t.fd);
      try {
        this.blobs.discard(t.path);
      } catch {
        // Left in tmp/ for the next start, which, finding no note, records nothing for it.
      }
      throw e;
    }
    const u: Upload = {
      id,
      persona,
      began: Date.now(),
      grant,
      target,
      size,
      received: 0,
      hashed: Promise.resolve(),
      unhashedBytes: 0,
      unhashedChunks: 0,
      fd: t.fd,
      path: t.path,
      expires: this.clock() + this.limits.idleMs,
      committing: false,
      flushed: 0,
      busy: new Set(),
      failed: undefined,
      closed: false,
      installed: undefined,
      ended: false,
    };
    this.byId.set(id, u);
    return u;
  }

  /**
   * The upload `id` of `persona` on `target`. Another persona's upload, one on another target
   * and an unknown or expired one get the same answer: ids are no oracle.
   */
  get(id: unknown, persona: string, target: string): Upload {
    const u = typeof id === "string" ? this.byId.get(id) : undefined;
    if (!u || u.persona !== persona || u.target !== target)
      throw new OpError(
        "SEMANTIC",
        `no upload ${String(id)} of ${persona} on ${target} (expired, committed, aborted or never begun)`,
      );
    if (u.committing) throw new OpError("SEMANTIC", `upload ${u.id} is being committed`);
    return u;
  }

  /**
   * Appends one chunk at `offset`: in order, no gap, no overlap, not past the declared size.
   * The chunk's place is taken and its write to the file begun (off the event loop) now, so the
   * next chunk may follow at once; the promise settles when its bytes are in the file, and only
   * then is the chunk acknowledged. The kernel keeps no chunk after its write; the hash worker
   * reads it back from the file, after the chunks before it.
   */
  chunk(u: Upload, offset: number, data: Uint8Array): Promise<void> {
    if (data.length === 0) throw new OpError("SEMANTIC", "an upload chunk holds at least one byte");
    if (u.failed) throw new OpError("RESOURCE", `upload ${u.id} failed: ${u.failed.message}`);
    if (offset !== u.received)
      throw new OpError(
        "SEMANTIC",
        `chunk at offset ${offset}, expected ${u.received}: chunks go in order, without gaps or overlap`,
      );
    if (offset + data.length > u.size)
      throw new OpError("SEMANTIC", `chunk ends at ${offset + data.length}, beyond the declared size ${u.size}`);
    u.received += data.length;
    u.expires = this.clock() + this.limits.idleMs;
    const p = writeAt(u.fd, data, offset).catch((e: Error) => {
      this.storeFailed(u, e);
      throw e;
    });
    this.track(u, p);
    const length = data.length;
    u.unhashedBytes += length;
    u.unhashedChunks++;
    u.hashed = u.hashed
      .then(() => p)
      // Not once the upload failed or was dropped (its descriptor is about to be given back).
      .then(() => (u.failed || u.closed ? undefined : this.hasher.range(u.id, u.fd, offset, length, u.persona)))
      .catch((e: Error) => {
        u.failed ??= e;
      })
      .then(() => {
        u.unhashedBytes -= length;
        u.unhashedChunks--;
      });
    this.track(u, u.hashed);
    // Start writing the file out while the upload goes on: a gigabyte of dirty pages left for the
    // commit makes writes slow (the OS throttles the writer) and the commit's sync long.
    if (u.received - u.flushed >= FLUSH_EVERY) {
      u.flushed = u.received;
      this.track(
        u,
        p.then(
          // A writeback error is reported to one sync only: this one's fails the upload, or the
          // commit's own sync would pass while these bytes were lost.
          () =>
            new Promise<void>((resolve) =>
              fdatasync(u.fd, (e) => {
                if (e) this.storeFailed(u, e);
                resolve();
              }),
            ),
          () => {},
        ),
      );
    }
    // Hashing behind by more than the bound: this chunk is acknowledged once it caught up (u.hashed never rejects).
    if (u.unhashedBytes > UNHASHED_BYTES || u.unhashedChunks > UNHASHED_CHUNKS) return Promise.all([p, u.hashed]).then(() => {});
    return p;
  }

  /**
   * The upload's bytes could not be stored (no room, a writeback error): it can never commit, so
   * its partial bytes are given back now, once its writes in progress settled (no chunk is taken
   * after this) — not when its persona aborts it or it idles out. An upload whose chunk took the
   * disk's last room held it, and with it every request of every persona (none could be
   * recorded, its persona's abort included), for `uploadIdleMs`. The upload stays, empty, for
   * its abort or expiry.
   */
  private storeFailed(u: Upload, e: Error): void {
    u.failed ??= e;
    // By path, not by descriptor: the descriptor may be closed by then and its number reused;
    // a dropped upload's path was renamed away (ENOENT, nothing to do).
    void Promise.allSettled(u.busy).then(() => truncate(u.path, 0, () => {}));
  }

  /**
   * The kernel's storage stays full: every upload in progress (but one being committed) fails and
   * gives its partial bytes back ({@link storeFailed}). None of them can go on while nothing can be
   * recorded — its chunks, and its persona's abort, are refused like every request — and what
   * they hold may be the room the kernel needs to record anything again: an upload whose chunks
   * all fitted, leaving no room for their records, kept every request refused until it idled out
   * (`uploadIdleMs`). Each persona uploads again once there is room. Returns how many failed.
   */
  failAll(why: string): number {
    let n = 0;
    for (const u of this.byId.values()) {
      if (u.committing || u.failed || u.installed) continue;
      this.storeFailed(u, Object.assign(new Error(why), { code: "ENOSPC" }));
      n++;
    }
    return n;
  }

  /** Every write and flush of the upload has settled (the commit syncs after this; a failed write fails it). */
  async settled(u: Upload): Promise<void> {
    await Promise.allSettled(u.busy);
    if (u.failed) throw u.failed;
  }

  private track(u: Upload, p: Promise<unknown>): void {
    const q: Promise<unknown> = p.then(
      () => u.busy.delete(q),
      () => u.busy.delete(q),
    );
    u.busy.add(q);
  }

  /**
   * The SHA-256 of the upload's bytes, all of them written and hashed (after {@link settled});
   * a hash that could not be made fails it.
   */
  async digest(u: Upload): Promise<Buffer> {
    await u.hashed;
    if (u.failed) throw u.failed;
    return this.hasher.digest(u.id, u.received);
  }

  /** Takes the upload out of the table (its partial file is the caller's now: installed or dropped). */
  take(u: Upload): void {
    this.byId.delete(u.id);
    this.blobs.removeNote(u.id);
    this.hasher.forget(u.id);
    this.closeFile(u);
  }

  /** Gives the partial file's descriptor back, once its writes and flushes settled. */
  closeFile(u: Upload): void {
    // Once only: a second close could close whatever file was given the number since.
    if (u.closed) return;
    u.closed = true;
    // Off the event loop: the file may be unlinked already (a dropped upload), and then this close
    // frees its blocks (BlobStore.discard).
    const close = () => closeQuiet(u.fd);
    // Never close a descriptor a write or flush still uses: its number could be reused by
    // another file, which the pending write would then write into.
    if (u.busy.size) void Promise.allSettled(u.busy).then(close);
    else close();
  }

  /** Discards an upload and its partial file (or its installed body, unless a row names it). */
  drop(u: Upload): void {
    this.take(u);
    // Inline bytes are in memory only: their partial file went when they were read.
    if (u.inline) return;
    if (u.installed) {
      this.blobs.unpin(u.installed);
      this.blobs.release(u.installed, u.size);
    } else {
      try {
        this.blobs.discard(u.path);
      } catch {
        // Neither moved nor removed (the file system fails): the upload is gone all the same (taken
        // above), and its file, in the store's tmp/, with it at the next start. An abort succeeds; a
        // commit's or a sweep's own error or work stands.
      }
    }
  }

  /**
   * A commit that had installed the body was refused after all (its compare-and-set or quota,
   * by a write that raced its sync): the upload stays, holding the body, for a retry or an abort
   * — unless the grant that began it was revoked meanwhile: then it is dropped with its body.
   */
  keep(u: Upload, installed: Buffer, inline?: Buffer): void {
    u.installed = installed;
    u.inline = inline;
    // Revoked (or its persona removed, or the kernel stopping) while it committed: nothing may
    // commit it any more, so it holds no slot nor body. After close, the record could not be
    // written: its note stays, and the next start records its end.
    if (u.ended && !this.closed) return this.end(u, u.endedBy ?? "revoked");
    u.committing = false;
    u.expires = this.clock() + this.limits.idleMs;
  }

  /**
   * Drops every upload begun under a grant now revoked (token.revoke, a persona's removal): its
   * chunks and commit would be refused anyway, and its slot and declared bytes would otherwise
   * stay taken until it expired idle. One being committed finishes (its commit re-checks) and is
   * marked: refused, it is dropped then ({@link keep}), not kept for a retry.
   */
  dropRevoked(isRevoked: (g: Grant) => boolean): number {
    return this.dropWhere((u) => u.grant !== undefined && isRevoked(u.grant), "revoked");
  }

  /**
   * Like {@link dropRevoked}, for a grant whose token's root key was retired (`kpip token
   * retire-key`): its chunks are refused, and no other token of its persona may commit the bytes
   * sent under a key no longer trusted, nor may they hold the tree's place until they expire idle.
   */
  dropRetired(retired: (g: Grant) => boolean): number {
    return this.dropWhere((u) => u.grant !== undefined && retired(u.grant), "key retired");
  }

  /**
   * Drops every upload of a persona `gone` says is no longer registered (persona.remove): no one
   * can commit it any more (an upload is its persona's), and the grant that began it — a parent's
   * token a sub-persona used — need not be revoked, so {@link dropRevoked} would leave it holding
   * the tree's place until it expired idle.
   */
  dropOf(gone: (persona: string, since: number) => boolean): number {
    return this.dropWhere((u) => gone(u.persona, u.began), "persona removed");
  }

  private dropWhere(ends: (u: Upload) => boolean, why: UploadEnd): number {
    let n = 0;
    for (const u of [...this.byId.values()]) {
      if (!ends(u)) continue;
      if (u.committing) {
        u.ended = true;
        u.endedBy = why;
      } else {
        this.end(u, why);
        n++;
      }
    }
    return n;
  }

  /** Drops an upload its persona did not end, and says why (an act of the kernel, on the record). */
  private end(u: Upload, why: UploadEnd): void {
    this.drop(u);
    this.onEnded?.(u, why);
  }

  /** Discards every idle upload past its expiry. */
  expire(now = this.clock()): number {
    let n = 0;
    for (const u of [...this.byId.values()]) {
      if (!u.committing && u.expires <= now) {
        this.end(u, "idle");
        n++;
      }
    }
    return n;
  }

  /**
   * The kernel stops (its sessions ended, before its kernel.stop record): every upload not being
   * committed ends on the record (`storage.upload.ended`, "kernel stopped"), its note and partial
   * file removed, as the start after a kill records the ones a kill left. One being committed (its
   * request outlasted the drain) is marked: refused at its commit (effects stopped) and kept, it
   * ends so then ({@link keep}) — {@link close} dropped it with its note and no record anywhere.
   * Answers how many ended now.
   */
  endAll(): number {
    let n = 0;
    for (const u of [...this.byId.values()])
      if (!u.committing) {
        this.end(u, "kernel stopped");
        n++;
      } else if (!u.ended) {
        u.ended = true;
        u.endedBy = "kernel stopped";
      }
    return n;
  }

  /**
   * The kernel stops (after its sessions drained): every upload ends, its partial file removed.
   * One still committing finishes or fails on its own; a file it leaves is swept at the next start.
   */
  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.blobs.removeLeftNotes();
    for (const u of [...this.byId.values()]) if (!u.committing) this.drop(u);
    this.hasher.close();
  }
}
