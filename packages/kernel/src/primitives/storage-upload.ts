import { readSync } from "node:fs";
import { storageUploadAbort, storageUploadBegin, storageUploadChunk, storageUploadCommit } from "@kpip/protocol";
import { implement } from "./implement.js";
import { commitObject, generationConflict, objectAddress, type StorageDeps, type StorageLimits } from "./storage-common.js";
import type { Upload } from "./storage-uploads.js";
import { OpError, type PrimitiveDeclaration } from "./types.js";

/**
 * The chunked upload (PROTOCOL §9.7): objects larger than one frame. Each op names the object's
 * target and is authorized as `storage.write` on it, exactly as a write would be; the commit's
 * intent carries the whole object's SHA-256 and size, so the audited record says which bytes
 * became the object.
 */
export function uploadOps(d: StorageDeps, limits: StorageLimits): PrimitiveDeclaration[] {
  const { uploads, blobs } = d;
  return [
    implement(storageUploadBegin, {
      handler: (ctx) => {
        const { workspace, path } = objectAddress(ctx);
        const size = ctx.args.size;
        if (size > limits.maxObjectBytes)
          throw new OpError("RESOURCE", `object of ${size} bytes exceeds the limit of ${limits.maxObjectBytes}`);
        // Quotas are charged at the commit; an upload that could never commit is refused now, and
        // the bytes other uploads in progress have declared count as used: four uploads cannot
        // each fit a quota that only one of them fits, and fill the disk meanwhile — nor four
        // over an object as large, which add nothing once one commits but hold partial bytes.
        d.ledger.checkStorage(
          ctx.persona,
          workspace,
          path,
          d.store.statObject(workspace, path),
          size,
          ctx.grant,
          uploads.pendingFor(workspace),
          true,
        );
        const u = uploads.begin(ctx.persona, ctx.targetUri, size, ctx.grant);
        return { status: "SUCCESS", payload: { upload: u.id, size }, audit: { upload: u.id, size } };
      },
    }),
    implement(storageUploadChunk, {
      // The chunk's write to the partial file is done when the handler settles (the hash reads the file).
      releasesArgs: true,
      handler: async (ctx) => {
        const u = uploads.get(ctx.args.upload, ctx.persona, ctx.targetUri);
        const offset = ctx.args.offset;
        const data = ctx.args.data;
        await uploads.chunk(u, offset, data);
        return { status: "SUCCESS", payload: { received: offset + data.length } };
      },
    }),
    implement(storageUploadCommit, {
      handler: async (ctx) => {
        const { workspace, path } = objectAddress(ctx);
        const u = uploads.get(ctx.args.upload, ctx.persona, ctx.targetUri);
        // Its bytes could not be stored (they were given back): it can never commit, whatever it
        // holds — RESOURCE naming why, as its chunks are (PROTOCOL §9.7 rule 5), not "send the
        // rest"; it stays, empty, for its abort or expiry.
        if (u.failed) throw new OpError("RESOURCE", `upload ${u.id} failed: ${u.failed.message}`);
        const want = ctx.args.sha256;
        if (!(want instanceof Uint8Array) || want.length !== 32) throw new OpError("SEMANTIC", "sha256 must be 32 bytes");
        if (u.installed && !u.installed.equals(want)) {
          // Other bytes than were uploaded: the upload ends, as at the first commit (PROTOCOL §9.7 rule 4).
          uploads.drop(u);
          throw new OpError(
            "SEMANTIC",
            `the uploaded bytes have SHA-256 ${u.installed.toString("hex")}, not ${Buffer.from(want).toString("hex")}`,
          );
        }
        const size = ctx.args.size;
        // Not yet every declared byte, or a size other than declared: refused, the upload stays (send the rest, or abort).
        if (size !== u.size || u.received !== u.size) {
          throw new OpError("SEMANTIC", `upload has ${u.received} of ${u.size} bytes; the commit says ${size}`);
        }
        // What would refuse the commit itself — a compare-and-set that cannot hold, a quota the
        // object no longer fits — is checked before the upload is consumed, so a refused commit
        // leaves the upload for the client to retry or abort.
        const existing = d.store.statObject(workspace, path);
        const ifGeneration = ctx.args.ifGeneration;
        if (ifGeneration !== undefined && ifGeneration !== (existing?.generation ?? 0))
          throw generationConflict(ctx, existing?.generation ?? 0);
        d.ledger.checkStorage(ctx.persona, workspace, path, existing, size, ctx.grant, uploads.pendingFor(workspace, u));
        u.committing = true;
        // A body below the inline size stays in the database, as a write's does: a file (a block
        // and an inode) for each few bytes charged let a small storage.bytes limit fill the disk.
        let inline = u.inline;
        let hash: Buffer;
        if (u.installed) hash = u.installed;
        else if (size < limits.inlineBytes) {
          const v = await readUpload(d, u, want);
          hash = v.hash;
          inline = v.data;
        } else hash = await installUpload(d, u, want);
        // A write that raced the sync above can still refuse the commit: the upload keeps the
        // installed body (pinned once more here, as commitObject unpins one) for a retry.
        if (!inline) blobs.pin(hash);
        let result: ReturnType<typeof commitObject> | undefined;
        // Committed, even if a clean-up after the commit throws (the pipeline answers the commit's record).
        let done = false;
        try {
          const body = inline ? { data: inline } : { hash, size };
          // Inline bytes are as durable as a storage.write's: no sync of the database on this
          // thread per commit, which tiny uploads in a loop would turn into a stall for everyone.
          result = commitObject(
            ctx,
            d,
            workspace,
            path,
            body,
            { sha256: hash },
            () => {
              done = true;
            },
            hash,
          );
        } finally {
          if (done) {
            if (!inline) blobs.unpin(hash);
            uploads.take(u);
          } else uploads.keep(u, hash, inline);
        }
        return result;
      },
    }),
    implement(storageUploadAbort, {
      handler: (ctx) => {
        uploads.drop(uploads.get(ctx.args.upload, ctx.persona, ctx.targetUri));
        return { status: "SUCCESS", payload: { aborted: true } };
      },
    }),
  ];
}

/**
 * Waits for the upload's bytes (fewer than the inline size), checks them against the SHA-256 the
 * commit names and reads them for the database; its partial file goes. Bytes that could not be
 * stored, or are not the ones the persona meant, end the upload.
 */
async function readUpload(d: StorageDeps, u: Upload, want: Uint8Array): Promise<{ hash: Buffer; data: Buffer }> {
  const { uploads } = d;
  const hash = await verifiedHash(d, u, want);
  let data: Buffer;
  try {
    data = readWhole(u.fd, u.size);
  } catch (e) {
    uploads.drop(u);
    throw e;
  }
  uploads.closeFile(u);
  // The bytes are read: a partial file the file system refuses to move or remove (EIO) fails no
  // commit — it threw here, the upload left with its file closed — and goes with the store's
  // tmp/ at the next start.
  try {
    d.blobs.discard(u.path);
  } catch (e) {
    d.peerLog.write(
      u.persona,
      "error",
      { err: e, upload: u.id },
      "an upload's partial file could not be removed; the next start removes it",
    );
  }
  return { hash, data };
}

/** `size` bytes of a file from its start (a short file is an error, never a short body). */
function readWhole(fd: number, size: number): Buffer {
  const out = Buffer.alloc(size);
  let got = 0;
  while (got < size) {
    const n = readSync(fd, out, got, size - got, got);
    if (n === 0) throw new Error(`the upload's file holds ${got} of its ${size} bytes`);
    got += n;
  }
  return out;
}

/** The SHA-256 of the upload's bytes, once every write settled, checked against the one the commit names; otherwise the upload ends. */
async function verifiedHash(d: StorageDeps, u: Upload, want: Uint8Array): Promise<Buffer> {
  const { uploads } = d;
  try {
    await uploads.settled(u);
  } catch (e) {
    uploads.drop(u);
    throw new OpError("RESOURCE", `the upload's bytes could not be stored: ${(e as Error).message}`);
  }
  let hash: Buffer;
  try {
    hash = await uploads.digest(u);
  } catch (e) {
    uploads.drop(u);
    throw new OpError("RESOURCE", `the upload's bytes could not be hashed: ${(e as Error).message}`);
  }
  if (!hash.equals(want)) {
    uploads.drop(u);
    throw new OpError(
      "SEMANTIC",
      `the uploaded bytes have SHA-256 ${hash.toString("hex")}, not ${Buffer.from(want).toString("hex")}; the upload is discarded`,
    );
  }
  return hash;
}

/**
 * Waits for the upload's bytes, checks them against the SHA-256 the commit names, syncs them and
 * moves them to their address in the store: the returned body is pinned. Bytes that could not be
 * stored, or are not the ones the persona meant, end the upload.
 */
async function installUpload(d: StorageDeps, u: Upload, want: Uint8Array): Promise<Buffer> {
  const { uploads, blobs } = d;
  const hash = await verifiedHash(d, u, want);
  blobs.pin(hash);
  try {
    await blobs.syncFile(u.fd);
    uploads.closeFile(u);
    await blobs.install(u.path, hash);
  } catch (e) {
    blobs.unpin(hash);
    uploads.drop(u);
    throw e;
  }
  return hash;
}
