import { createHash } from "node:crypto";
import { DEFAULT_LIMITS, storageDelete, storageList, storageRead, storageStat, storageWrite } from "@kpip/protocol";
import { answerRoom } from "../limits.js";
import { DamagedBodyError } from "../store/blobs.js";
import type { ObjectBody } from "../store/types.js";
import { implement } from "./implement.js";
import { pageAnswer, textPageRequest } from "./paging.js";
import { commitObject, generationConflict, objectAddress, type StorageDeps, type StorageLimits } from "./storage-common.js";
import { uploadOps } from "./storage-upload.js";
import { storageChanged, watchOps } from "./storage-watch.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

export type { StorageDeps, StorageLimits } from "./storage-common.js";

function dataArg(ctx: OpContext): Uint8Array {
  const d = ctx.args.data;
  if (d instanceof Uint8Array) return d;
  if (typeof d === "string") return Buffer.from(d, "utf8");
  throw new OpError("SEMANTIC", "storage.write needs argument data (bytes or text)");
}

/** storage.write/read/stat/list/delete, the chunked upload and watches on obj://<workspace>/<path>. */
/** A listed object's fields besides its path, encoded (keys, size, generation), with room to spare. */
const LIST_ITEM_BYTES = 64;

export function storageFamily(d: StorageDeps, limits: StorageLimits): PrimitiveFamily {
  const { store, blobs, ledger } = d;
  return {
    name: "storage",
    ops: [
      implement(storageWrite, {
        // The body is written, synced and hashed before the handler settles; small ones are copied into the database.
        releasesArgs: true,
        // Its row commits in atomically (the registry asked there); a file-store body written before is released when that refuses.
        effectsInAtomically: true,
        handler: async (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          const data = dataArg(ctx);
          if (data.length > limits.maxObjectBytes) {
            throw new OpError("RESOURCE", `object of ${data.length} bytes exceeds the limit of ${limits.maxObjectBytes}`);
          }
          // Small bodies stay in the database (one commit, no file: its transaction checks the
          // generation and the limits); larger ones are written to the file store first (synced),
          // then named by the row (docs/architecture.md).
          if (data.length < limits.inlineBytes) {
            // Past what the record keeps of the intent: the body's hash says what was written.
            const h = data.length >= limits.recordHashFrom ? createHash("sha256").update(data).digest() : undefined;
            return commitObject(ctx, d, workspace, path, { data }, {}, undefined, h);
          }
          // A write that cannot commit as things stand — a stale ifGeneration, a limit it is past —
          // is refused before its body is written and synced (the commit checks both again, in
          // its transaction): refused only there, a persona still had the disk write and sync a
          // body at its request rate. The generation first, as the commit (and an upload's) does.
          const existing = store.statObject(workspace, path);
          const want = ctx.args.ifGeneration;
          if (want !== undefined && want !== (existing?.generation ?? 0))
            throw generationConflict(ctx, existing?.generation ?? 0);
          ledger.checkStorage(ctx.persona, workspace, path, existing, data.length, ctx.grant);
          const body: ObjectBody = { hash: await blobs.put(data), size: data.length };
          return commitObject(ctx, d, workspace, path, body);
        },
      }),
      implement(storageRead, {
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          const o = store.readObject(workspace, path);
          if (!o) throw new OpError("SEMANTIC", `no object at ${ctx.targetUri}`);
          const want = ctx.args.ifGeneration;
          if (want !== undefined && want !== o.generation)
            throw new OpError("SEMANTIC", `generation conflict: ${ctx.targetUri} is at generation ${o.generation}`);
          const offset = ctx.args.offset ?? 0;
          if (offset > o.size) throw new OpError("SEMANTIC", `offset ${offset} is beyond the object's ${o.size} bytes`);
          const length = Math.min(ctx.args.length ?? o.size - offset, o.size - offset);
          // What fits one answer on this session (its negotiated maxBody, less the envelope).
          const fits = Math.min(limits.maxReadBytes, answerRoom(ctx.maxBody));
          // SEMANTIC, not RESOURCE: the same read fails the same way however often it is retried.
          if (length > fits) {
            throw new OpError(
              "SEMANTIC",
              `${length} bytes do not fit one response (at most ${fits}); read the object in ranges (offset, length)`,
            );
          }
          // Counted before it is read: pipelined reads of a large object cannot pile up in memory.
          ctx.holdAnswerBytes(length);
          let data: Buffer;
          try {
            data = o.hash
              ? blobs.read(o.hash, offset, length, o.size)
              : Buffer.from(o.data.buffer, o.data.byteOffset + offset, length);
          } catch (e) {
            if (!(e instanceof DamagedBodyError)) throw e;
            // Lost bytes, said as such (INTERNAL: a storage error, PROTOCOL §10.1), never a short answer.
            d.damaged.report(e, ctx.targetUri);
            throw new OpError(
              "INTERNAL",
              `the stored body of ${ctx.targetUri} is damaged (${e.found === null ? "missing" : `${e.found} bytes on disk, not ${e.size}`}): it cannot be read until the operator restores it`,
            );
          }
          // Which version was read, for the record: the write of that generation (a generation is
          // never reused on a path) says what it held; a file-store body's address is its SHA-256,
          // which outlives that write's record and the object.
          return {
            status: "SUCCESS",
            payload: { data, generation: o.generation, size: o.size, offset },
            audit: o.hash
              ? { generation: o.generation, sha256: Buffer.from(o.hash).toString("hex") }
              : { generation: o.generation },
          };
        },
      }),
      implement(storageStat, {
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          const o = store.statObject(workspace, path);
          if (!o) throw new OpError("SEMANTIC", `no object at ${ctx.targetUri}`);
          return { status: "SUCCESS", payload: { generation: o.generation, size: o.size, updatedAt: o.updatedAt } };
        },
      }),
      implement(storageList, {
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx, true);
          const prefix = path === "" ? "" : `${path}/`;
          // The cursor is the last path shown: the next page is the paths after it under the prefix.
          const page = textPageRequest(ctx.args, "a storage list");
          if (page.cursor !== undefined && !page.cursor.startsWith(prefix))
            throw new OpError("SEMANTIC", "cursor does not belong to this listing");
          // The page's largest answer (every path as long as a target allows), counted before the
          // rows are read: a burst past the budget is refused without building pages. The pipeline
          // gives back what the page built does not take.
          ctx.holdAnswerBytes(page.limit * (DEFAULT_LIMITS.maxTargetBytes + LIST_ITEM_BYTES));
          const rows = store.listObjects(workspace, prefix, page.cursor, page.limit + 1);
          return pageAnswer(
            rows,
            page,
            "items",
            (o) => ({ path: o.path, size: o.size, generation: o.generation }),
            (o) => o.path,
          );
        },
      }),
      implement(storageDelete, {
        effectsInAtomically: true,
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          // The row, its owner's usage and the request's dedupe record change in one transaction.
          let old: { hash: Uint8Array; size: number } | undefined;
          const result = ctx.atomically(
            (): OpResult =>
              store.partOfTransaction(() => {
                const x = store.deleteObject(workspace, path, ctx.args.ifGeneration);
                if (x === undefined) throw new OpError("SEMANTIC", `no object at ${ctx.targetUri}`);
                if (!x.ok) throw generationConflict(ctx, x.current);
                if (x.previous) ledger.releaseStorage(workspace, path, x.previous);
                old = x.previous?.hash ? { hash: x.previous.hash, size: x.previous.size } : undefined;
                return {
                  status: "SUCCESS",
                  payload: { deleted: true, generation: x.generation },
                  audit: { generation: x.generation },
                };
              }),
          );
          // The row is gone (committed): its body goes at the next tick unless an object names the same bytes then.
          if (old) blobs.release(old.hash, old.size);
          storageChanged(d.watch.bus, workspace, path, (result.payload as { generation: number }).generation, "delete");
          return result;
        },
      }),
      ...uploadOps(d, limits),
      ...watchOps(d.watch),
    ],
  };
}
