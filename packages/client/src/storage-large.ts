import { createHash } from "node:crypto";
import {
  type ResultOf,
  storageRead,
  storageUploadAbort,
  storageUploadBegin,
  storageUploadChunk,
  storageUploadCommit,
} from "@kpip/protocol";
import { KpipError, ProtocolViolationError, UploadLostError } from "./errors.js";
import type { OpCall } from "./op-call.js";
import type { CallOptions } from "./options.js";

/** Room a chunk's request leaves for its envelope, intent and arguments inside one frame. */
const ENVELOPE_SLACK = 64 * 1024;
const DEFAULT_CHUNK = 4 * 1024 * 1024;

export interface PutLargeOptions extends CallOptions {
  /** The object's size: required when `source` is an iterable (the upload declares it first). */
  size?: number;
  /** Bytes per chunk (default 4 MiB, at most what one frame holds). */
  chunkBytes?: number;
  /** Chunks in flight at once (default 2): bounds the client's memory to about that many chunks. */
  window?: number;
  /** Compare-and-set at the commit: 0 = only if absent, n = only if at generation n. */
  ifGeneration?: number;
}

export interface ReadLargeOptions extends CallOptions {
  /** Bytes per ranged read (default 4 MiB, at most what one frame holds). */
  chunkBytes?: number;
}

export function chunkSize(requested: number | undefined, maxBody: number): number {
  // A frame of a few KiB (the protocol allows 4 KiB) keeps half of it for the chunk.
  const cap = Math.max(1, maxBody - Math.min(ENVELOPE_SLACK, Math.floor(maxBody / 2)));
  return Math.max(1, Math.min(requested ?? DEFAULT_CHUNK, cap));
}

/** Re-cuts any sequence of byte arrays into pieces of exactly `n` bytes (the last one shorter). */
async function* rechunk(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, n: number): AsyncIterable<Uint8Array> {
  let pending: Uint8Array[] = [];
  let have = 0;
  for await (const piece of source) {
    let p = piece;
    while (p.length > 0) {
      const take = Math.min(n - have, p.length);
      pending.push(p.subarray(0, take));
      have += take;
      p = p.subarray(take);
      if (have === n) {
        yield pending.length === 1 ? (pending[0] as Uint8Array) : Buffer.concat(pending);
        pending = [];
        have = 0;
      }
    }
  }
  if (have > 0) yield pending.length === 1 ? (pending[0] as Uint8Array) : Buffer.concat(pending);
}

/** Fresh `begin`s after the first when the kernel lost a buffer source's upload across a reconnect. */
const LOST_UPLOAD_RESTARTS = 3;

/**
 * The chunked upload (PROTOCOL §9.7): begin with the size, chunks in order (`window` in flight),
 * then a commit naming the SHA-256 the client computed over exactly the bytes it sent. Any
 * failure aborts the upload (best effort) and is thrown. An upload the kernel lost to a restart
 * while the client reconnected (`connections`: the client's count of sessions made) is begun
 * again from a buffer source, at most {@link LOST_UPLOAD_RESTARTS} times; from an iterable one
 * (consumed) it is {@link UploadLostError}.
 */
export async function putLarge(
  op: OpCall,
  maxBody: number,
  target: string,
  source: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  opts: PutLargeOptions = {},
  connections: () => number = () => 0,
): Promise<ResultOf<typeof storageUploadCommit>> {
  const { size: declared, chunkBytes, window = 2, ifGeneration, ...callOpts } = opts;
  const size = source instanceof Uint8Array ? source.length : declared;
  if (size === undefined) throw new TypeError("putLarge: give the size of an iterable source (opts.size)");
  if (declared !== undefined && declared !== size) throw new TypeError(`putLarge: size ${declared} but the buffer holds ${size}`);
  const n = chunkSize(chunkBytes, maxBody);
  for (let begun = 1; ; begun++) {
    try {
      return await uploadOnce(op, target, source, { size, n, window, ifGeneration, callOpts }, connections);
    } catch (e) {
      if (!(e instanceof UploadLostError)) throw e;
      if (!(source instanceof Uint8Array))
        throw new UploadLostError(`${e.message}; the source was an iterable, already consumed: put it again from a fresh one`, {
          cause: e.cause,
        });
      if (begun > LOST_UPLOAD_RESTARTS) throw new UploadLostError(`${e.message}, ${begun} times: giving up`, { cause: e.cause });
    }
  }
}

interface UploadPlan {
  size: number;
  n: number;
  window: number;
  ifGeneration: number | undefined;
  callOpts: CallOptions;
}

/** One upload from its `begin` to its commit; {@link UploadLostError} when the kernel lost it across a reconnect. */
async function uploadOnce(
  op: OpCall,
  target: string,
  source: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  plan: UploadPlan,
  connections: () => number,
): Promise<ResultOf<typeof storageUploadCommit>> {
  const { size, n, window, ifGeneration, callOpts } = plan;
  // Read before the begin is sent: a reconnect while it is in flight counts too (its answer,
  // replayed from the dedupe record after a restart, names an upload the new kernel never had).
  const since = connections();
  const { upload } = (await op(storageUploadBegin, target, { size }, callOpts)).payload;
  const hash = createHash("sha256");
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  let offset = 0;
  try {
    const pieces = source instanceof Uint8Array ? rechunk([source], n) : rechunk(source, n);
    for await (const piece of pieces) {
      if (failure !== undefined) break;
      if (offset + piece.length > size) throw new RangeError(`putLarge: the source holds more than the declared ${size} bytes`);
      // Sent first, hashed after: the kernel works on the chunk while this thread hashes it. The
      // chunk is sent from its own memory (not copied): the source must not change it meanwhile.
      const p: Promise<void> = op(storageUploadChunk, target, { upload, offset, data: piece }, callOpts).then(
        () => {
          inFlight.delete(p);
        },
        (e: unknown) => {
          inFlight.delete(p);
          failure ??= e;
        },
      );
      inFlight.add(p);
      hash.update(piece);
      offset += piece.length;
      while (inFlight.size >= Math.max(1, window)) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    if (offset !== size) throw new RangeError(`putLarge: the source held ${offset} bytes, not the declared ${size}`);
    const args = { upload, sha256: hash.digest(), size, ifGeneration };
    return (await op(storageUploadCommit, target, args, callOpts)).payload;
  } catch (e) {
    await Promise.allSettled(inFlight);
    // The abort is also the probe: refused SEMANTIC, the kernel has no such upload. After a
    // reconnect that is a restart having lost it (§9.7), not a refusal of what was sent — the
    // kernel answers every unknown id alike, so the client asks rather than reads the message.
    const gone = await op(storageUploadAbort, target, { upload }, callOpts).then(
      () => false,
      (a: unknown) => a instanceof KpipError && a.errorClass === "SEMANTIC",
    );
    if (gone && e instanceof KpipError && e.errorClass === "SEMANTIC" && connections() !== since)
      throw new UploadLostError(
        `the kernel lost upload ${upload} of ${target} while the client reconnected (uploads do not outlive a kernel restart)`,
        { cause: e },
      );
    throw e;
  }
}

/**
 * An object's bytes in ranged reads of `chunkBytes`, all of one generation: a write between
 * two ranges fails the next read (SEMANTIC, generation conflict) rather than mixing versions.
 * Each answer must be the range asked of that one version — the same generation and size, the
 * bytes from the offset asked, no more than asked, none missing before the end — else
 * {@link ProtocolViolationError}: a faulty kernel's answers would otherwise be followed for
 * ever (a size that grows with every range), or give other bytes than the object's.
 */
export async function* readStream(
  op: OpCall,
  maxBody: number,
  target: string,
  opts: ReadLargeOptions = {},
): AsyncIterable<Uint8Array> {
  const { chunkBytes, ...callOpts } = opts;
  const n = chunkSize(chunkBytes, maxBody);
  let offset = 0;
  let first: { generation: number; size: number } | undefined;
  for (;;) {
    const r = (await op(storageRead, target, { offset, length: n, ifGeneration: first?.generation }, callOpts)).payload;
    first ??= { generation: r.generation, size: r.size };
    const wrong =
      r.generation !== first.generation || r.size !== first.size
        ? `generation ${r.generation} and size ${r.size} for the ranges of generation ${first.generation}, size ${first.size}`
        : r.offset !== offset
          ? `the range at ${r.offset} for the one asked at ${offset}`
          : r.data.length > n
            ? `${r.data.length} bytes for a range of ${n}`
            : offset + r.data.length > first.size || (r.data.length === 0 && offset < first.size)
              ? `${r.data.length} bytes at ${offset} of an object of ${first.size}`
              : undefined;
    if (wrong !== undefined) throw new ProtocolViolationError(`the kernel answered a read of ${target} with ${wrong}`);
    if (r.data.length > 0) yield r.data;
    offset += r.data.length;
    if (offset >= first.size) return;
  }
}
