import {
  type CapabilityRef,
  CborError,
  type CborMap,
  type CborValue,
  encodeCanonical,
  HEADER_SIZE,
  headSize,
  type Intent,
  IntentError,
  MessageType,
  PIECE_REF_MIN,
  PieceWriter,
  type RequestContext,
  validateIntent,
  validateIntentFields,
  writeHead,
  writeHeader,
} from "@kpip/protocol";

/** A REQUEST frame built in one buffer, and where the intent's bytes sit in it. */
export interface RequestFrame {
  frame: Buffer;
  intentAt: number;
  intentEnd: number;
}

/**
 * The client's REQUEST encoder: the intent is encoded into a reused scratch writer, and the
 * frame is assembled in one exact-size buffer around it from parts that do not change from
 * call to call (the encoded caps of the bound handles, and the context, persona and version
 * tail of a session), so a call allocates one buffer where the generic path allocated two
 * writers, their buffers, the message objects and a piece list. The bytes are exactly what
 * `framePieces({ type: "REQUEST", body })` makes with the intent from `encodeIntent` (pinned by
 * request-frame.test.ts); resends go through that generic path.
 */
export class RequestEncoder {
  /** Byte strings of PIECE_REF_MIN bytes or more are referenced, not copied: a bulk payload is never copied into its intent. */
  private w = newWriter();
  private capsFor: readonly CapabilityRef[] | undefined;
  private capsBytes: Buffer = EMPTY;
  private tailVersion = -1;
  private tailBytes: Buffer = EMPTY;

  constructor(
    private readonly persona: string,
    /** The context of a call that names no context fields of its own. */
    private readonly defaultContext: RequestContext,
  ) {}

  /**
   * Validates and encodes an intent into the scratch writer; returns its length. The bytes
   * stay valid until the next call of this method (take them with {@link frame},
   * {@link copyIntent} or {@link takeIntent}). Throws {@link IntentError}, as encodeIntent does.
   */
  encodeIntent(intent: Intent): number {
    validateIntent(intent);
    const w = this.w;
    w.reset();
    try {
      w.write(intent as unknown as CborValue);
    } catch (e) {
      if (e instanceof CborError) throw new IntentError(e.code, e.message);
      throw e;
    }
    return w.length;
  }

  /**
   * As {@link encodeIntent} for the intent `{ op, args, target }` with the deadline, if any, as
   * its one constraint (what `call` sends), written field by field without building it.
   */
  encodeCall(op: string, target: string, args: CborMap, deadline: number | undefined): number {
    validateIntentFields(op, target, args, deadline === undefined ? undefined : { deadline });
    const w = this.w;
    w.reset();
    try {
      // Keys in canonical order: op, args, target, constraints.
      w.head(5, deadline === undefined ? 3 : 4);
      w.write("op");
      w.write(op);
      w.write("args");
      w.write(args, 1);
      w.write("target");
      w.write(target);
      if (deadline !== undefined) {
        w.write("constraints");
        w.head(5, 1);
        w.write("deadline");
        w.write(deadline);
      }
    } catch (e) {
      if (e instanceof CborError) throw new IntentError(e.code, e.message);
      throw e;
    }
    return w.length;
  }

  /**
   * The encoded intent is large: it is handed over as pieces (views of the scratch writer's
   * buffer and the referenced byte strings, which the caller must not change until the call
   * settles) and the scratch writer replaced, so nothing is copied.
   */
  takeIntent(): Uint8Array[] {
    const pieces = this.w.finishParts();
    this.w = newWriter();
    return pieces;
  }

  /** A copy of the encoded intent (for a call that waits for a session before its first frame). */
  copyIntent(): Buffer {
    return Buffer.concat(this.w.finishParts());
  }

  /**
   * The REQUEST frame for the encoded intent, or undefined when the intent is large enough to
   * be referenced into a vectored write instead of copied (then use {@link takeIntent}).
   * `context` undefined: the default context.
   */
  frame(
    id: number,
    stream: number,
    caps: readonly CapabilityRef[],
    context: RequestContext | undefined,
    version: number,
  ): RequestFrame | undefined {
    const intentLen = this.w.length;
    if (intentLen >= PIECE_REF_MIN) return undefined;
    const capsBytes = this.caps(caps);
    const tail = context === undefined ? this.tail(version) : this.encodeTail(context, version);
    const headLen = prefixSize(id, capsBytes, intentLen);
    const out = Buffer.allocUnsafe(headLen + intentLen + tail.length);
    let at = writePrefix(out, stream, id, capsBytes, intentLen, headLen + intentLen + tail.length);
    const intentAt = at;
    // Below PIECE_REF_MIN bytes nothing was referenced: the writer's buffer is the intent.
    at += this.w.copyWholeTo(out, at);
    put(out, at, tail);
    return { frame: out, intentAt, intentEnd: intentAt + intentLen };
  }

  /**
   * A REQUEST frame around an intent taken as pieces ({@link takeIntent}), as pieces for a
   * vectored write: the same bytes {@link frame} would build, with the intent's referenced byte
   * strings not copied. `context` undefined: the default context.
   */
  framePieces(
    id: number,
    stream: number,
    caps: readonly CapabilityRef[],
    context: RequestContext | undefined,
    version: number,
    intent: readonly Uint8Array[],
  ): { pieces: Uint8Array[]; bodySize: number } {
    let intentLen = 0;
    for (const p of intent) intentLen += p.length;
    const capsBytes = this.caps(caps);
    const tail = context === undefined ? this.tail(version) : this.encodeTail(context, version);
    const head = Buffer.allocUnsafe(prefixSize(id, capsBytes, intentLen));
    const bodySize = head.length - HEADER_SIZE + intentLen + tail.length;
    writePrefix(head, stream, id, capsBytes, intentLen, HEADER_SIZE + bodySize);
    return { pieces: [head, ...intent, tail], bodySize };
  }

  /**
   * The encoded caps. The bound handles' encoding is kept while the same array comes back: a
   * frozen array of numbers, which cannot change; any other is encoded every time.
   */
  private caps(caps: readonly CapabilityRef[]): Buffer {
    if (caps === this.capsFor) return this.capsBytes;
    const bytes = encodeCanonical(caps as CborValue);
    if (Object.isFrozen(caps) && caps.every((c) => typeof c === "number")) {
      this.capsFor = caps;
      this.capsBytes = bytes;
    }
    return bytes;
  }

  private tail(version: number): Buffer {
    if (version !== this.tailVersion) {
      this.tailBytes = this.encodeTail(this.defaultContext, version);
      this.tailVersion = version;
    }
    return this.tailBytes;
  }

  /** `context`, `persona` and `version`: the body's last three entries. */
  private encodeTail(context: RequestContext, version: number): Buffer {
    const enc = encodeCanonical({ context, persona: this.persona, version } as unknown as CborValue);
    return enc.subarray(1); // without the map head of these three: the frame has its own
  }
}

const EMPTY = Buffer.alloc(0);
/** The intent's writer: its text must be well-formed (a lone surrogate is refused, never sent as U+FFFD, as encodeIntent does). */
const newWriter = () => Object.assign(new PieceWriter(512, 0, PIECE_REF_MIN), { wellFormedText: true });
const KEY_ID = encodeCanonical("id");
const KEY_CAPS = encodeCanonical("caps");
const KEY_INTENT = encodeCanonical("intent");

/** Bytes of a REQUEST frame up to its intent's bytes: the header, the map head, id, caps and the intent's key and head. */
function prefixSize(id: number, capsBytes: Uint8Array, intentLen: number): number {
  return (
    HEADER_SIZE + 1 + KEY_ID.length + headSize(id) + KEY_CAPS.length + capsBytes.length + KEY_INTENT.length + headSize(intentLen)
  );
}

/** Writes that prefix of a frame of `size` bytes into `out`; returns where the intent's bytes go. */
function writePrefix(out: Buffer, stream: number, id: number, capsBytes: Uint8Array, intentLen: number, size: number): number {
  writeHeader(out, 0, { type: MessageType.REQUEST, flags: 0, stream, length: size - HEADER_SIZE });
  let at = HEADER_SIZE;
  // Keys in canonical order (by length, then bytewise): id, caps, intent, context, persona, version.
  out[at++] = 0xa6;
  at = put(out, at, KEY_ID);
  at = writeHead(out, at, 0, id);
  at = put(out, at, KEY_CAPS);
  at = put(out, at, capsBytes);
  at = put(out, at, KEY_INTENT);
  return writeHead(out, at, 2, intentLen);
}

/** Copies `src` into `out` at `at`; returns the position after it. Short copies byte by byte (no call into Buffer.copy). */
function put(out: Buffer, at: number, src: Uint8Array): number {
  const n = src.length;
  if (n > 64) {
    out.set(src, at);
    return at + n;
  }
  for (let i = 0; i < n; i++) out[at + i] = src[i] as number;
  return at + n;
}
