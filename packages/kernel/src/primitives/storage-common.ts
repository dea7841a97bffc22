import { type CborMap, grantAllows } from "@kpip/protocol";
import type { ResourceLedger } from "../resources/ledger.js";
import type { PeerLogLimiter } from "../session/log-limit.js";
import type { BlobStore } from "../store/blobs.js";
import type { DamagedBodies } from "../store/damaged-bodies.js";
import type { ObjectBody, ObjectStore, PreviousObject } from "../store/types.js";
import type { UploadTable } from "./storage-uploads.js";
import { storageChanged, type WatchDeps } from "./storage-watch.js";
import { type OpContext, OpError, type OpResult } from "./types.js";

/* What the storage ops (storage.ts) and the chunked upload (storage-upload.ts) share. */

export interface StorageLimits {
  /** Largest object, in bytes, however it is written. */
  maxObjectBytes: number;
  /** Bodies smaller than this stay inline in the database; larger ones go to the file store. */
  inlineBytes: number;
  /** Largest body one storage.read answers (it must fit one frame); larger objects are read in ranges. */
  maxReadBytes: number;
  /**
   * Inline bodies of at least this many bytes have their SHA-256 on the write's outcome record:
   * their intent is past what the record keeps (auditIntentMaxBytes), so nothing else there says
   * which bytes were written. File-store bodies always have it (their name: no extra work).
   */
  recordHashFrom: number;
}

/** Where the storage family keeps things: metadata, bodies, the usage ledger, and uploads in progress. */
export interface StorageDeps {
  store: ObjectStore;
  blobs: BlobStore;
  ledger: ResourceLedger;
  uploads: UploadTable;
  /** Where changes are told to the sessions watching them (storage.watch). */
  watch: WatchDeps;
  /** The kernel's log, each persona within its budget: a clean-up that failed under a refusal. */
  peerLog: Pick<PeerLogLimiter, "write">;
  /** Where a read that meets a damaged body reports it (logged and recorded once). */
  damaged: Pick<DamagedBodies, "report">;
}

/** An object address: obj://<workspace>/<path>. The target grammar already forbids ".", "..", empty segments and percent-encoding. */
export function objectAddress(ctx: OpContext, allowWorkspaceOnly = false): { workspace: string; path: string } {
  const [workspace, ...rest] = ctx.target.segments;
  if (rest.some((s) => s === "*" || s === "**")) throw new OpError("SEMANTIC", `${ctx.op} takes an object name, not a pattern`);
  if (rest.length === 0 && !allowWorkspaceOnly) throw new OpError("SEMANTIC", `${ctx.op} needs obj://<workspace>/<path>`);
  return { workspace: workspace as string, path: rest.join("/") };
}

/**
 * A refused compare-and-set (`ifGeneration`). It names the object's current generation only to a
 * caller whose grant may also stat or read the object: a persona that may only write (a drop box)
 * would otherwise learn, without changing anything, how often another persona rewrote its object
 * — a number no op it holds answers (red team, wt-red55). That the object exists (or not) the
 * refusal itself says: that is what a compare-and-set asks.
 */
export function generationConflict(ctx: Pick<OpContext, "grant" | "targetUri">, current: number): OpError {
  const g = ctx.grant;
  const mayLook = !g || grantAllows(g, "storage.stat", ctx.targetUri) || grantAllows(g, "storage.read", ctx.targetUri);
  return new OpError(
    "SEMANTIC",
    mayLook
      ? `generation conflict: ${ctx.targetUri} is at generation ${current}`
      : `generation conflict: ${ctx.targetUri} is ${current === 0 ? "absent" : "at another generation"}`,
  );
}

/**
 * Commits an object's new body (inline, or a pinned body already in the file store) with its
 * owner's usage and the request's dedupe record (`ctx.atomically`, PROTOCOL §11 rule 9) in one
 * transaction, then lets go of the bodies nothing names any more: the previous one, or the new
 * one when the write did not happen. Never removes a body before the row that stops naming it
 * has committed.
 */
export function commitObject(
  ctx: OpContext<{ ifGeneration?: number }>,
  d: Pick<StorageDeps, "store" | "blobs" | "ledger" | "watch" | "peerLog">,
  workspace: string,
  path: string,
  body: ObjectBody,
  /** More of the answer (recorded with it, so a retry gets the same). */
  extra: CborMap = {},
  /** Called once the row has committed, before the clean-up (which may still throw). */
  committed: () => void = () => {},
  /** An inline body's SHA-256, for the record (a file-store body's is its name). */
  inlineHash?: Uint8Array,
): OpResult {
  const { store, blobs, ledger } = d;
  const size = "data" in body ? body.data.length : body.size;
  const hash = "hash" in body ? body.hash : null;
  const recorded = hash ?? inlineHash;
  let previous: PreviousObject | undefined;
  let generation = 0;
  // The bodies nothing names now: the previous one, or the new one when the write did not happen.
  // Released, not collected: they go at the next housekeeping tick, after one WAL sync for the
  // batch, so whether they go shows neither in the request's time nor as a disk sync on the
  // kernel's thread per request (BlobStore.release). The new body of a write that happened is
  // named by its row: it stays, whoever else names it.
  const freeBodies = (happened: boolean) => {
    if (hash) {
      blobs.unpin(hash);
      if (!happened) blobs.release(hash, size);
    }
    const old = previous?.hash ?? undefined;
    if (previous && old && !(hash && Buffer.from(old).equals(Buffer.from(hash)))) blobs.release(old, previous.size);
  };
  let result: OpResult;
  try {
    result = ctx.atomically(
      (): OpResult =>
        // Part of the transaction atomically opens (with the dedupe record); a conflict thrown here rolls all of it back.
        store.partOfTransaction(() => {
          const w = store.writeObject(workspace, path, body, ctx.args.ifGeneration, Date.now(), ctx.persona);
          if (!w.ok) throw generationConflict(ctx, w.current);
          ledger.chargeStorage(ctx.persona, workspace, path, w.previous, size, ctx.grant);
          previous = w.previous;
          generation = w.generation;
          return {
            status: "SUCCESS",
            payload: { generation: w.generation, size, ...extra },
            audit: recorded
              ? { generation: w.generation, size, sha256: Buffer.from(recorded).toString("hex") }
              : { generation: w.generation, size },
          };
        }),
    );
    committed();
    storageChanged(d.watch.bus, workspace, path, generation, "write");
  } catch (e) {
    // The clean-up's failure must not replace the op's own (a generation conflict told as
    // INTERNAL): it is logged, and the body nothing names goes at the next start's sweep.
    try {
      freeBodies(false);
    } catch (cleanup) {
      d.peerLog.write(
        ctx.persona,
        "error",
        { err: cleanup, op: ctx.op },
        "freeing a body the write left failed; the next start removes it",
      );
    }
    throw e;
  }
  // A failure here is work after the committed effect: the pipeline logs it, the answer stands.
  freeBodies(true);
  return result;
}
