import { isErrorClass, isStatus, MessageError } from "../errors.js";
import { isPersonaId, isWorkspaceId } from "../intent/grammar.js";
import type { Message } from "./types.js";

/** A field check: throws MessageError naming the field path. */
type Check = (v: unknown, path: string) => void;

const fail = (path: string, what: string): never => {
  throw new MessageError("BAD_FIELD", `${path} must be ${what}`);
};

const uint: Check = (v, p) => {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) fail(p, "an unsigned integer");
};
const text =
  (max = 4096): Check =>
  (v, p) => {
    if (typeof v !== "string" || v.length > max) fail(p, `a text string of at most ${max} characters`);
  };
const bytes =
  (min = 0, max = Number.MAX_SAFE_INTEGER): Check =>
  (v, p) => {
    if (!(v instanceof Uint8Array) || v.length < min || v.length > max) {
      fail(p, min === max ? `a byte string of ${min} bytes` : `a byte string of ${min}..${max} bytes`);
    }
  };
const bool: Check = (v, p) => {
  if (typeof v !== "boolean") fail(p, "a boolean");
};
const map: Check = (v, p) => {
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) fail(p, "a map");
};
const any: Check = () => {};
const arrayOf =
  (item: Check, max: number): Check =>
  (v, p) => {
    if (!Array.isArray(v) || v.length > max) fail(p, `an array of at most ${max} items`);
    (v as unknown[]).forEach((x, i) => {
      item(x, `${p}[${i}]`);
    });
  };
const persona: Check = (v, p) => {
  if (typeof v !== "string" || !isPersonaId(v)) fail(p, "a persona id (e.g. alice or alice/worker-1)");
};
const workspace: Check = (v, p) => {
  if (typeof v !== "string" || !isWorkspaceId(v)) fail(p, "a workspace id");
};
const status: Check = (v, p) => {
  if (!isStatus(v)) fail(p, "one of SUCCESS, FAILURE, PARTIAL, DEFERRED");
};
const errorClass: Check = (v, p) => {
  if (!isErrorClass(v)) fail(p, "an error class");
};
const capRef: Check = (v, p) => {
  if (typeof v === "number") uint(v, p);
  else if (v instanceof Uint8Array) bytes(1, 8192)(v, p);
  else fail(p, "a handle (unsigned integer) or a token (byte string)");
};

/** field name → [check, required]. Unknown fields are ignored (forward compatibility). */
type Shape = Record<string, [Check, boolean]>;

function shapeOf(fields: Shape): Check {
  // Listed once: an entries array per message was garbage on every frame.
  const entries = Object.entries(fields);
  return (v, p) => {
    map(v, p);
    const o = v as Record<string, unknown>;
    for (const [name, [check, required]] of entries) {
      const x = o[name];
      if (x === undefined) {
        if (required) throw new MessageError("MISSING_FIELD", `${p}.${name} is required`);
        continue;
      }
      check(x, `${p}.${name}`);
    }
  };
}

const SHAPES: Record<Message["type"], Check> = {
  HELLO: shapeOf({
    versions: [arrayOf(uint, 16), true],
    persona: [persona, true],
    publicKey: [bytes(32, 32), true],
    instance: [bytes(16, 16), true],
    features: [arrayOf(text(64), 32), true],
    client: [text(256), false],
    maxBody: [uint, false],
  }),
  CHALLENGE: shapeOf({
    version: [uint, true],
    session: [text(128), true],
    nonce: [bytes(32, 32), true],
    kernel: [text(128), true],
    heartbeatMs: [uint, true],
    limits: [shapeOf({ maxBody: [uint, true], maxInFlight: [uint, true], dedupeWindowMs: [uint, true] }), true],
    features: [arrayOf(text(64), 32), true],
  }),
  ATTEST: shapeOf({
    signature: [bytes(64, 64), true],
    tokens: [arrayOf(bytes(1, 8192), 64), true],
    measurements: [map, false],
  }),
  WELCOME: shapeOf({
    persona: [persona, true],
    handles: [arrayOf(uint, 64), true],
    refused: [arrayOf(shapeOf({ index: [uint, true], code: [text(64), true], message: [text(1024), true] }), 64), false],
  }),
  REQUEST: shapeOf({
    version: [uint, true],
    persona: [persona, true],
    id: [uint, true],
    intent: [bytes(1), true],
    context: [
      shapeOf({
        persona: [persona, true],
        workspace: [workspace, false],
        execution: [text(128), false],
        domain: [text(128), false],
        traceparent: [text(128), false],
      }),
      true,
    ],
    caps: [arrayOf(capRef, 64), true],
  }),
  RESPONSE: shapeOf({
    version: [uint, true],
    id: [uint, true],
    status: [status, true],
    error: [errorClass, false],
    message: [text(65536), false],
    payload: [any, false],
  }),
  EVENT: shapeOf({
    subscription: [uint, true],
    topic: [text(2048), true],
    seq: [uint, true],
    data: [any, false],
    gap: [uint, false],
    ended: [text(1024), false],
  }),
  PING: shapeOf({ seq: [uint, true] }),
  PONG: shapeOf({ seq: [uint, true] }),
  GOODBYE: shapeOf({ reason: [text(1024), false] }),
  ERROR: shapeOf({
    class: [errorClass, true],
    code: [text(64), true],
    message: [text(65536), true],
    id: [uint, false],
    fatal: [bool, true],
  }),
};

/**
 * Checks a decoded body against its message type's shape. Throws {@link MessageError}
 * (PROTOCOL). Fields a version does not know are ignored; required fields must be present.
 */
export function validateMessage(type: Message["type"], body: unknown): void {
  SHAPES[type](body, type.toLowerCase());
  if (type === "RESPONSE") {
    const r = body as { status: string; error?: string; message?: string };
    const failed = r.status === "FAILURE";
    if (failed !== (r.error !== undefined)) {
      throw new MessageError("BAD_FIELD", "response.error is present exactly when status is FAILURE");
    }
    if (failed && r.message === undefined) throw new MessageError("MISSING_FIELD", "response.message is required on FAILURE");
  }
}
