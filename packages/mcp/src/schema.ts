import type { CborMap, CborValue, FieldSpec } from "@kpip/protocol";

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
  if (!isPlainObject(v)) return undefined;
  const keys = Object.keys(v);
  if (keys.length !== 1 || keys[0] !== BYTES_MARKER) return undefined;
  const b = v[BYTES_MARKER];
  if (typeof b !== "string" || !BASE64.test(b)) throw new InputError(`${path}.${BYTES_MARKER} must be standard base64 text`);
  return Buffer.from(b, "base64");
}

/** JSON from the host as CBOR: the bytes marker becomes bytes; fractions and unsafe integers are refused. */
export function fromJson(v: unknown, path: string): CborValue {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw new InputError(`${path}: only integers are allowed (got ${v}); send fractions as text`);
    return v;
  }
  if (Array.isArray(v)) return v.map((x, i) => fromJson(x, `${path}[${i}]`));
  if (!isPlainObject(v)) throw new InputError(`${path}: unsupported value`);
  const bytes = bytesFrom(v, path);
  if (bytes) return bytes;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromJson(x, `${path}.${k}`)]));
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
