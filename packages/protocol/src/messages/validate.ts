import { isErrorClass, isStatus, MessageError } from "../errors.js";
import { isPersonaId, isWorkspaceId } from "../intent/grammar.js";
import type { Message } from "./types.js";

/**
 * A field check: throws MessageError naming the field path. The path is passed in two parts,
 * the enclosing path and the field name or index, and joined only when a check fails: a string
 * built per field of every frame was most of this check's cost.
 */
type Check = (v: unknown, at: string, key: string | number) => void;

const pathOf = (at: string, key: string | number): string =>
  key === "" ? at : typeof key === "number" ? `${at}[${key}]` : `${at}.${key}`;

/**
 * {@link pathOf}, remembered for the last (at, key) asked: a nested map's or an array's path is
 * the same text frame after frame (`REQUEST.context`, `REQUEST.caps`), so a check made once per
 * shape keeps one of these instead of concatenating it for every frame.
 */
function pathCache(): (at: string, key: string | number) => string {
  let lastAt = "";
  let lastKey: string | number = "";
  let last = "";
  return (at, key) => {
    if (key === "") return at;
    if (at !== lastAt || key !== lastKey) {
      last = pathOf(at, key);
      lastAt = at;
      lastKey = key;
    }
    return last;
  };
}

const fail = (at: string, key: string | number, what: string): never => {
  throw new MessageError("BAD_FIELD", `${pathOf(at, key)} must be ${what}`);
};

const uint: Check = (v, at, k) => {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) fail(at, k, "an unsigned integer");
};
const text =
  (max = 4096): Check =>
  (v, at, k) => {
    if (typeof v !== "string" || v.length > max) fail(at, k, `a text string of at most ${max} characters`);
  };
/**
 * Control characters (C0, DEL, C1), the bidirectional formatting characters, and what a terminal
 * draws as nothing or as a line break: every format character (zero-width space and joiners, the
 * BOM, soft hyphen, tag characters), every default-ignorable code point (variation selectors,
 * fillers) and the line and paragraph separators. In a text a peer chooses and an operator later
 * reads (the audit record, logs, a terminal), they could forge lines, hide text, make one name
 * look like another or send escape sequences to the terminal (PROTOCOL §6, `label(N)`). Listed
 * as code points, not Unicode properties, so that every implementation refuses the same text
 * whatever Unicode version it has (these are Cc, Cf, Zl, Zp and Default_Ignorable_Code_Point of
 * Unicode 17).
 */
export const UNPRINTABLE =
  // biome-ignore lint/suspicious/noMisleadingCharacterClass: code points refused one by one (U+034F among them), not graphemes
  /[\u0000-\u001f\u007f-\u009f\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}]/u;
const EVERY_UNPRINTABLE = new RegExp(UNPRINTABLE.source, "gu");

/** `text` with each {@link UNPRINTABLE} character replaced by `by(it)`: how views and labels make a peer's text safe to show. */
export function replaceUnprintable(text: string, by: (c: string) => string): string {
  return text.replace(EVERY_UNPRINTABLE, by);
}

/** `text` with each {@link UNPRINTABLE} character, except those in `keep`, a visible `\u{…}` escape. */
export function escapeUnprintable(text: string, keep = ""): string {
  return replaceUnprintable(text, (c) => (keep.includes(c) ? c : `\\u{${(c.codePointAt(0) as number).toString(16)}}`));
}
const label =
  (max: number): Check =>
  (v, at, k) => {
    if (typeof v !== "string" || v.length > max || UNPRINTABLE.test(v))
      fail(
        at,
        k,
        `a text string of at most ${max} characters, none of them a control, format, invisible or bidirectional formatting character`,
      );
  };
const bytes =
  (min = 0, max = Number.MAX_SAFE_INTEGER): Check =>
  (v, at, k) => {
    if (!(v instanceof Uint8Array) || v.length < min || v.length > max) {
      fail(at, k, min === max ? `a byte string of ${min} bytes` : `a byte string of ${min}..${max} bytes`);
    }
  };
const bool: Check = (v, at, k) => {
  if (typeof v !== "boolean") fail(at, k, "a boolean");
};
const map: Check = (v, at, k) => {
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) fail(at, k, "a map");
};
const any: Check = () => {};
const arrayOf = (item: Check, max: number): Check => {
  const path = pathCache();
  return (v, at, k) => {
    if (!Array.isArray(v) || v.length > max) fail(at, k, `an array of at most ${max} items`);
    const a = v as unknown[];
    if (a.length === 0) return;
    const p = path(at, k);
    for (let i = 0; i < a.length; i++) item(a[i], p, i);
  };
};
const persona: Check = (v, at, k) => {
  if (typeof v !== "string" || !isPersonaId(v)) fail(at, k, "a persona id (e.g. alice or alice/worker-1)");
};
const workspace: Check = (v, at, k) => {
  if (typeof v !== "string" || !isWorkspaceId(v)) fail(at, k, "a workspace id");
};
const status: Check = (v, at, k) => {
  if (!isStatus(v)) fail(at, k, "one of SUCCESS, FAILURE, PARTIAL, DEFERRED");
};
const errorClass: Check = (v, at, k) => {
  if (!isErrorClass(v)) fail(at, k, "an error class");
};
const capToken = bytes(1, 8192);
const capRef: Check = (v, at, k) => {
  if (typeof v === "number") uint(v, at, k);
  else if (v instanceof Uint8Array) capToken(v, at, k);
  else fail(at, k, "a handle (unsigned integer) or a token (byte string)");
};

/** field name → [check, required]. Unknown fields are ignored (forward compatibility). */
type Shape = Record<string, [Check, boolean]>;

function shapeOf(fields: Shape): Check {
  // Listed once, as parallel arrays: nothing is allocated per frame.
  const names = Object.keys(fields);
  const checks = names.map((n) => (fields[n] as [Check, boolean])[0]);
  const required = names.map((n) => (fields[n] as [Check, boolean])[1]);
  const path = pathCache();
  return (v, at, k) => {
    map(v, at, k);
    const o = v as Record<string, unknown>;
    // Once per map: free for a message's body (key ""), remembered for a nested map.
    const p = path(at, k);
    for (let i = 0; i < names.length; i++) {
      const name = names[i] as string;
      const x = o[name];
      if (x === undefined) {
        if (required[i]) throw new MessageError("MISSING_FIELD", `${p}.${name} is required`);
        continue;
      }
      (checks[i] as Check)(x, p, name);
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
    client: [label(256), false],
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
        execution: [label(128), false],
        domain: [label(128), false],
        traceparent: [label(128), false],
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

const LOWER = Object.fromEntries(Object.keys(SHAPES).map((t) => [t, t.toLowerCase()])) as Record<Message["type"], string>;

/**
 * Checks a decoded body against its message type's shape. Throws {@link MessageError}
 * (PROTOCOL). Fields a version does not know are ignored; required fields must be present.
 */
export function validateMessage(type: Message["type"], body: unknown): void {
  SHAPES[type](body, LOWER[type], "");
  if (type === "RESPONSE") {
    const r = body as { status: string; error?: string; message?: string };
    const failed = r.status === "FAILURE";
    if (failed !== (r.error !== undefined)) {
      throw new MessageError("BAD_FIELD", "response.error is present exactly when status is FAILURE");
    }
    if (failed && r.message === undefined) throw new MessageError("MISSING_FIELD", "response.message is required on FAILURE");
  }
}
