import { decodeCanonical } from "../cbor/decode.js";
import type { PieceWriter } from "../cbor/encode.js";
import type { CborValue } from "../cbor/value.js";
import { DEFAULT_LIMITS, type DecodeLimits, MessageType, messageTypeName } from "../constants.js";
import { CborError, MessageError } from "../errors.js";
import type { Frame } from "../frame/decoder.js";
import { encodeFrame, encodeFrameParts, encodeFramePieces } from "../frame/encoder.js";
import { encodedBody } from "./encoded-body.js";
import type { Message } from "./types.js";
import { validateMessage } from "./validate.js";

/** Encodes a message as one frame buffer (header + canonical CBOR body). */
export function encodeMessage(msg: Message, stream = 0, flags = 0): Buffer {
  const pre = encodedBody(msg.body);
  if (pre !== undefined) return Buffer.concat(encodeFrameParts({ type: MessageType[msg.type], stream, flags }, pre));
  return encodeFrame({ type: MessageType[msg.type], stream, flags }, msg.body as unknown as CborValue);
}

/**
 * The message as frame pieces, byte strings of `refMin` bytes or more referenced, not copied; a
 * body marked with its encoding ({@link withEncodedBody}) is framed as those bytes, not encoded again.
 */
export function encodeMessagePieces(msg: Message, stream: number, refMin: number, into?: PieceWriter): Uint8Array[] {
  const pre = encodedBody(msg.body);
  if (pre !== undefined) return encodeFrameParts({ type: MessageType[msg.type], stream }, pre);
  return encodeFramePieces(
    { type: MessageType[msg.type], stream },
    msg.body as unknown as CborValue,
    refMin,
    msg.type === "RESPONSE",
    into,
  );
}

/**
 * Decodes and validates a frame's body as the message its header names.
 * Throws {@link CborError} or {@link MessageError}, both PROTOCOL class.
 */
export function decodeMessage(frame: Frame, limits: DecodeLimits = DEFAULT_LIMITS): Message {
  const type = messageTypeName(frame.type);
  if (type === undefined) throw new MessageError("UNKNOWN_TYPE", `unknown message type ${frame.type}`);
  const body = decodeCanonical(frame.body, limits);
  validateMessage(type, body);
  return { type, body } as Message;
}

export { CborError };
