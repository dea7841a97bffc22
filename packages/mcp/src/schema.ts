import { type CborMap, type CborValue, DEFAULT_LIMITS, type DecodeLimits, type FieldSpec } from "@kpip/protocol";

/** One argument of an op, as `system.describe` declares it (a field of the op catalogue). */
export type ArgDecl = FieldSpec;

/** One op of the kernel's table (`system.describe`). */
export interface OpDecl {
  op: string;
  description: string;
  targets: string[];
  idempotent: boolean;
  effects: boolean;
  args: Record<string, ArgDecl>;
  /** The payload's fields (the kernel's built-in ops declare them). */
  result?: Record<string, ArgDecl>;
  /** The op a grant must name to allow this one, when not its own name (the kernel authorizes by it). */
  authorizeAs?: string;
  /** `subtree`: it acts on everything under its target (a listing), allowed only by a grant covering `<target>/**`. */
  reach?: "subtree";
  /** What it leaves on the caller's session past its answer, when it does: never a tool (see gateway.ts). */
  sessionState?: string;
}

/** Bad input from the host: answered with an MCP error; the kernel is never asked. */
export class InputError extends Error {
  override name = "InputError";
}

/** What each target scheme looks like, for the model reading the schema. */
const SCHEME_SHAPES: Record<string, string> = {
  kernel: "kernel://",
  obj: "obj://<workspace>/<path>",
  persona: "persona://<persona-id>",
  token: "token://<token-id>",
  topic: "topic://<name>",
  op: "op://<op-id> (compute.submit: op://command/<executable> or op://task/<name>)",
  agent: "agent://<executable>/<instance>",
};

/** The JSON marker for bytes, the same as `kpip call --args` and `--json` use. */
export const BYTES_MARKER = "$bytes";

const BYTES_HINT = `bytes as {"${BYTES_MARKER}": "<base64>"}`;

function argSchema(a: ArgDecl): Record<string, unknown> {
  switch (a.type) {
    case "bytes":
      return {
        type: "object",
        description: `${a.description} (${BYTES_HINT})`,
        properties: { [BYTES_MARKER]: { type: "string", contentEncoding: "base64" } },
        required: [BYTES_MARKER],
        additionalProperties: false,
      };
    case "text":
      return { type: "string", description: a.description };
    case "uint":
      return { type: "integer", minimum: 0, description: a.description };
    case "bool":
      return { type: "boolean", description: a.description };
    case "map": {
      const m: Record<string, unknown> = {
        type: "object",
        description: `${a.description} (integers only, no fractions; ${BYTES_HINT})`,
      };
      // What is inside, when the op declares it: a record's fields, or every value's type.
      if (a.fields) {
        m.properties = Object.fromEntries(Object.entries(a.fields).map(([k, f]) => [k, argSchema(f)]));
        m.required = Object.entries(a.fields)
          .filter(([, f]) => f.required)
          .map(([k]) => k);
      }
      if (a.values) m.additionalProperties = argSchema(a.values);
      return m;
    }
    case "array":
      return {
        type: "array",
        description: `${a.description} (integers only, no fractions; ${BYTES_HINT})`,
        ...(a.items ? { items: argSchema(a.items) } : {}),
      };
    default:
      return { description: `${a.description} (text, integer, boolean, array, object, or ${BYTES_HINT})` };
  }
}

/** Only kernel:// targets: the target may be left out. */
function kernelOnly(d: OpDecl): boolean {
  return d.targets.length === 1 && d.targets[0] === "kernel";
}

/**
 * The tool's input schema: `target` (a URI of one of the op's schemes) and `args` (the
 * declared arguments, nothing else). `allowed` lists the token's target patterns for the op,
 * so a model knows where it may act before it is refused.
 */
export function inputSchema(d: OpDecl, allowed: string[]): Record<string, unknown> {
  const shapes = d.targets.map((s) => own(SCHEME_SHAPES, s) ?? `${s}://…`).join(" or ");
  const target: Record<string, unknown> = {
    type: "string",
    description: `The target URI: ${shapes}. This token allows: ${allowed.join(", ")}`,
  };
  if (kernelOnly(d)) target.default = "kernel://";
  const props = Object.fromEntries(Object.entries(d.args).map(([k, a]) => [k, argSchema(a)]));
  const required = Object.entries(d.args)
    .filter(([, a]) => a.required)
    .map(([k]) => k);
  const schema: Record<string, unknown> = {
    type: "object",
    properties: {
      target,
      args: { type: "object", properties: props, required, additionalProperties: false },
    },
    required: [...(kernelOnly(d) ? [] : ["target"]), ...(required.length ? ["args"] : [])],
    additionalProperties: false,
  };
  return schema;
}

/** A description a model can act on: what the op does, whether it changes state, and its targets. */
export function toolDescription(d: OpDecl): string {
  const effects = d.effects ? "Changes state" : "Read-only";
  const idem = d.idempotent ? "idempotent" : "not idempotent";
  return `${d.description} (KPIP op ${d.op}; ${effects}, ${idem}. Every call is capability-checked and audited by the kernel.)`;
}

/** `o[k]` when `o` has it as its own property: never an Object.prototype member. */
function own<T>(o: Record<string, T>, k: string): T | undefined {
  return Object.hasOwn(o, k) ? o[k] : undefined;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array);

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function bytesFrom(v: unknown, path: string): Uint8Array | undefined {
  // hasOwn first: a large object is not listed to learn it is no marker.
  if (!isPlainObject(v) || !Object.hasOwn(v, BYTES_MARKER)) return undefined;
  if (Object.keys(v).length !== 1) return undefined;
  const b = v[BYTES_MARKER];
  if (typeof b !== "string" || !BASE64.test(b)) throw new InputError(`${path}.${BYTES_MARKER} must be standard base64 text`);
  return Buffer.from(b, "base64");
}

/** A value refused inside {@link fromJson}; where it is is put together only when it is thrown. */
class BadValue extends Error {
  /** The steps from the value to the argument (`[3]`, `.name`), innermost first. */
  readonly steps: string[] = [];
  constructor(readonly says: (path: string) => string) {
    super("bad value");
  }
}

function convert(v: unknown): CborValue {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw new BadValue((p) => `${p}: only integers are allowed (got ${v}); send fractions as text`);
    return v;
  }
  if (Array.isArray(v)) {
    const a: CborValue[] = [];
    let i = 0;
    try {
      for (; i < v.length; i++) a.push(convert(v[i]));
    } catch (e) {
      if (e instanceof BadValue) e.steps.push(`[${i}]`);
      throw e;
    }
    return a;
  }
  if (!isPlainObject(v)) throw new BadValue((p) => `${p}: unsupported value`);
  if (Object.hasOwn(v, BYTES_MARKER)) {
    try {
      const bytes = bytesFrom(v, "");
      if (bytes) return bytes;
    } catch (e) {
      if (e instanceof InputError) throw new BadValue((p) => `${p}${e.message}`);
      throw e;
    }
  }
  const o: CborMap = {};
  let k = "";
  try {
    for (k of Object.keys(v)) {
      const x = convert(v[k]);
      // "__proto__" as a plain assignment would set the prototype: defined, as Object.fromEntries did.
      if (k === "__proto__") Object.defineProperty(o, k, { value: x, enumerable: true, writable: true, configurable: true });
      else o[k] = x;
    }
  } catch (e) {
    if (e instanceof BadValue) e.steps.push(`.${k}`);
    throw e;
  }
  return o;
}

/**
 * JSON from the host as CBOR: the bytes marker becomes bytes; fractions and unsafe integers are
 * refused. No path string is made per value (a 100,000-key object made 100,000): only for the
 * value refused.
 */
export function fromJson(v: unknown, path: string): CborValue {
  try {
    return convert(v);
  } catch (e) {
    if (e instanceof BadValue) throw new InputError(e.says(path + e.steps.reverse().join("")));
    throw e;
  }
}

function checkArg(name: string, a: ArgDecl, v: unknown): CborValue {
  const path = `args.${name}`;
  switch (a.type) {
    case "bytes": {
      const b = bytesFrom(v, path);
      if (!b) throw new InputError(`${path} must be bytes: ${BYTES_HINT}`);
      return b;
    }
    case "text":
      if (typeof v !== "string") throw new InputError(`${path} must be text`);
      return v;
    case "uint":
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw new InputError(`${path} must be an unsigned integer`);
      return v;
    case "bool":
      if (typeof v !== "boolean") throw new InputError(`${path} must be true or false`);
      return v;
    case "map":
      if (!isPlainObject(v) || bytesFrom(v, path)) throw new InputError(`${path} must be an object`);
      return fromJson(v, path);
    case "array":
      if (!Array.isArray(v)) throw new InputError(`${path} must be an array`);
      return fromJson(v, path);
    default:
      return fromJson(v, path);
  }
}

/** A kernel decode bound the intent made of a host's arguments would pass (PROTOCOL §5.4). */
export interface PassedBound {
  bound: "maxDepth" | "maxItems";
  limit: number;
}

/**
 * The first of the kernel's decode bounds (PROTOCOL §5.4: `maxDepth`, `maxItems`) that the
 * intent `{op, target, args}` made of the host's `{target, args}` would pass, or undefined. The
 * kernel decodes every intent under these fixed bounds and refuses one past them: the gateway
 * refuses it first, before it spends a conversion, an encoding and a refusal's round trip on
 * it (a host's 100,000 keys took ~0.6 s of the gateway's CPU that every host waited on).
 *
 * Counted as the decoder counts: every value, array or object, array element, object key and
 * value is one item; `{"$bytes": …}` is one (a byte string), never a container. The input
 * stands for the intent's map (depth 0), so `args` is at depth 1 as in the intent. Without
 * recursion (any depth is safe to ask), and it stops at the first bound passed: a container
 * whose entries alone would pass `maxItems` is refused before any of them is visited.
 */
export function intentBoundPassed(input: unknown, limits: DecodeLimits = DEFAULT_LIMITS): PassedBound | undefined {
  const { maxDepth, maxItems } = limits;
  const a = input ?? {};
  // The intent's `op` (key and value), and the `target` and `args` the gateway supplies when left out.
  let items = 2;
  if (isPlainObject(a)) items += (Object.hasOwn(a, "target") ? 0 : 2) + (Object.hasOwn(a, "args") ? 0 : 2);
  const values: unknown[] = [a];
  const depths: number[] = [0];
  while (values.length > 0) {
    const v = values.pop();
    const depth = depths.pop() as number;
    if (++items > maxItems) return { bound: "maxItems", limit: maxItems };
    if (v === null || typeof v !== "object" || v instanceof Uint8Array) continue;
    if (Object.hasOwn(v, BYTES_MARKER) && Object.keys(v).length === 1) continue;
    if (depth >= maxDepth) return { bound: "maxDepth", limit: maxDepth };
    if (Array.isArray(v)) {
      // Each element is at least one item: counted before any is visited.
      if (items + v.length > maxItems) return { bound: "maxItems", limit: maxItems };
      for (const x of v) {
        values.push(x);
        depths.push(depth + 1);
      }
      continue;
    }
    // Keys, not values or entries: on an object of 100,000 keys they cost a third as much.
    const keys = Object.keys(v);
    // Each entry is two items at least (its key and its value).
    if (items + 2 * keys.length > maxItems) return { bound: "maxItems", limit: maxItems };
    items += keys.length;
    for (const k of keys) {
      values.push((v as Record<string, unknown>)[k]);
      depths.push(depth + 1);
    }
  }
  return undefined;
}

/** The host's arguments checked against the op's declaration and made an intent's target and args. */
export function parseToolArgs(d: OpDecl, input: unknown): { target: string; args: CborMap } {
  const a = input ?? {};
  if (!isPlainObject(a)) throw new InputError("arguments must be an object {target, args}");
  for (const k of Object.keys(a)) {
    if (k !== "target" && k !== "args") throw new InputError(`unknown argument ${JSON.stringify(k)}: give {target, args}`);
  }
  const target = own(a, "target") ?? (kernelOnly(d) ? "kernel://" : undefined);
  if (typeof target !== "string")
    throw new InputError(`target is required: a URI like ${own(SCHEME_SHAPES, d.targets[0] ?? "") ?? ""}`);
  const scheme = target.slice(0, Math.max(0, target.indexOf("://")));
  if (!d.targets.includes(scheme)) {
    throw new InputError(`${d.op} takes targets of scheme ${d.targets.map((s) => `${s}://`).join(", ")}, not ${target}`);
  }
  const raw = own(a, "args") ?? {};
  if (!isPlainObject(raw)) throw new InputError("args must be an object");
  const args: CborMap = {};
  for (const [k, v] of Object.entries(raw)) {
    // Own names only: "constructor", "toString", "__proto__" … are no op's arguments.
    const decl = own(d.args, k);
    if (!decl) throw new InputError(`${d.op} takes no argument ${JSON.stringify(k)}`);
    Object.defineProperty(args, k, { value: checkArg(k, decl, v), enumerable: true, writable: true, configurable: true });
  }
  for (const [k, decl] of Object.entries(d.args)) {
    if (decl.required && !Object.hasOwn(args, k)) throw new InputError(`args.${k} is required: ${decl.description}`);
  }
  return { target, args };
}

/** CBOR as JSON: bytes become the marker (or, when `big` says so, a reference), big integers {"$int": "…"}. */
export function toJson(v: CborValue | undefined, big?: (b: Uint8Array, path: string) => unknown, path = ""): unknown {
  if (v === undefined) return null;
  if (v instanceof Uint8Array) return big?.(v, path) ?? { [BYTES_MARKER]: Buffer.from(v).toString("base64") };
  if (typeof v === "bigint") return { $int: v.toString() };
  if (Array.isArray(v)) return v.map((x, i) => toJson(x, big, `${path}/${i}`));
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJson(x, big, `${path}/${k}`)]));
  }
  return v;
}

/** Every byte string in a payload, with its JSON-pointer path. */
export function byteStrings(v: CborValue | undefined, path = ""): { path: string; bytes: Uint8Array }[] {
  if (v instanceof Uint8Array) return [{ path, bytes: v }];
  if (Array.isArray(v)) return v.flatMap((x, i) => byteStrings(x, `${path}/${i}`));
  if (v !== null && typeof v === "object") return Object.entries(v).flatMap(([k, x]) => byteStrings(x, `${path}/${k}`));
  return [];
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** The bytes as text when they are UTF-8 without control characters (other than tab and newlines). */
export function asText(b: Uint8Array): string | undefined {
  try {
    const s = UTF8.decode(b);
    return /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(s) ? undefined : s;
  } catch {
    return undefined;
  }
}
