import { decodeCanonical } from "../cbor/decode.js";
import { encodeCanonical } from "../cbor/encode.js";
import type { CborMap, CborValue } from "../cbor/value.js";
import { DEFAULT_LIMITS, type DecodeLimits } from "../constants.js";
import { CborError, IntentError } from "../errors.js";
import { sha256 } from "../sha256.js";
import { isOp, type ParsedTarget, parseTarget } from "./grammar.js";

/** Constraints the kernel enforces on an intent; unknown keys are rejected. */
export interface IntentConstraints {
  /** Absolute deadline, Unix time in milliseconds: the kernel stops work after it. */
  deadline?: number;
}

/**
 * The canonical intent IR. The kernel validates its structure, never modifies, expands or
 * reinterprets it, and hashes its exact canonical bytes.
 */
export interface Intent {
  op: string;
  target: string;
  args: CborMap;
  constraints?: IntentConstraints;
}

const INTENT_KEYS = new Set(["op", "target", "args", "constraints"]);
const CONSTRAINT_KEYS = new Set(["deadline"]);

/** Checks an intent value against the grammar; throws {@link IntentError} (SEMANTIC). */
export function validateIntent(v: unknown, parsed?: { target?: ParsedTarget }): asserts v is Intent {
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) {
    throw new IntentError("NOT_A_MAP", "an intent must be a map");
  }
  const o = v as Record<string, unknown>;
  // for…in with hasOwn: Object.keys's keys in its order, without an array per request.
  for (const k in o) {
    if (Object.hasOwn(o, k) && !INTENT_KEYS.has(k))
      throw new IntentError("UNKNOWN_FIELD", `unknown intent field ${JSON.stringify(k)}`);
  }
  checkFields(o.op, o.target, o.args, o.constraints, false, parsed);
}

/**
 * The checks of {@link validateIntent} after its map and key checks, in the same order with
 * the same errors: for an intent a caller builds from known fields (the client's `call`), which
 * remembers the ops and targets it has already checked.
 */
export function validateIntentFields(op: unknown, target: unknown, args: unknown, constraints: unknown): void {
  checkFields(op, target, args, constraints, true);
}

/**
 * `memo`: consult and fill the remembered ops and targets. Only a client's own calls do: in a
 * kernel the sets would be shared by every persona (one could fill them for all, and a hit would
 * tell of another's targets), and the kernel parses the target again anyway.
 */
function checkFields(
  op: unknown,
  target: unknown,
  args: unknown,
  constraints: unknown,
  memo: boolean,
  parsed?: { target?: ParsedTarget },
): void {
  if (typeof op !== "string" || !((memo && GOOD_OPS.has(op)) || remember(GOOD_OPS, op, isOp(op), memo))) {
    throw new IntentError("BAD_OP", `op must be a dotted lowercase name like "storage.write" (got ${JSON.stringify(op)})`);
  }
  if (typeof target !== "string") throw new IntentError("BAD_TARGET", "target must be a text string");
  if (!(memo && GOOD_TARGETS.has(target))) {
    const t = parseTarget(target);
    if (typeof t === "string") throw new IntentError("BAD_TARGET", t);
    if (parsed) parsed.target = t;
    remember(GOOD_TARGETS, target, true, memo);
  }
  if (args === null || typeof args !== "object" || Array.isArray(args) || args instanceof Uint8Array) {
    throw new IntentError("BAD_ARGS", "args must be a map");
  }
  if (constraints !== undefined) {
    const c = constraints;
    if (c === null || typeof c !== "object" || Array.isArray(c) || c instanceof Uint8Array) {
      throw new IntentError("BAD_CONSTRAINTS", "constraints must be a map");
    }
    for (const [k, val] of Object.entries(c)) {
      if (!CONSTRAINT_KEYS.has(k)) throw new IntentError("BAD_CONSTRAINTS", `unknown constraint ${JSON.stringify(k)}`);
      if (k === "deadline" && (typeof val !== "number" || !Number.isSafeInteger(val) || val < 0)) {
        throw new IntentError("BAD_CONSTRAINTS", "deadline must be a non-negative integer (Unix ms)");
      }
    }
  }
}

/**
 * Ops and targets the client's calls already found to follow the grammar (a pure function of the
 * text), so a persona calling the same few ops on the same targets parses each once. Bounded:
 * once full, new texts are checked every time. Never filled by what a peer sends.
 */
const GOOD_OPS = new Set<string>();
const GOOD_TARGETS = new Set<string>();
const GOOD_MAX = 4096;
/** Longer texts are not remembered (the sets stay under a megabyte whatever a peer sends). */
const GOOD_TEXT_MAX = 128;

function remember(set: Set<string>, text: string, good: boolean, memo: boolean): boolean {
  if (memo && good && set.size < GOOD_MAX && text.length <= GOOD_TEXT_MAX) set.add(text);
  return good;
}

/** Validates and encodes an intent into its canonical bytes. */
export function encodeIntent(intent: Intent): Buffer {
  validateIntent(intent);
  try {
    // A lone surrogate is refused, not written as U+FFFD: the intent is what its caller asked.
    return encodeCanonical(intent as unknown as CborValue, { wellFormedText: true });
  } catch (e) {
    if (e instanceof CborError) throw new IntentError(e.code, e.message);
    throw e;
  }
}

/**
 * Decodes intent bytes received on the wire. Non-canonical bytes are rejected, never
 * re-encoded: the hash must be of exactly what the persona sent. Throws {@link IntentError}.
 * `parsed.target` receives the target as the grammar check parsed it (a kernel that needs it
 * parses it once).
 */
export function decodeIntent(
  bytes: Uint8Array,
  limits: DecodeLimits = DEFAULT_LIMITS,
  parsed?: { target?: ParsedTarget },
): Intent {
  let v: CborValue;
  try {
    v = decodeCanonical(bytes, limits);
  } catch (e) {
    if (e instanceof CborError) throw new IntentError(e.code, `intent is not canonical CBOR: ${e.message}`);
    throw e;
  }
  validateIntent(v, parsed);
  return v;
}

/** The intent hash: SHA-256 over the exact canonical intent bytes. */
export function intentHash(bytes: Uint8Array): Buffer {
  return sha256(bytes);
}
