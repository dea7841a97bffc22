import { type CborValue, type FieldSpec, type FieldType, KpipError } from "@kpip/protocol";
import type { OpDecl } from "./schema.js";

const FIELD_TYPES: ReadonlySet<string> = new Set<FieldType>(["bytes", "text", "uint", "bool", "map", "array", "any"]);

function isMap(v: CborValue | undefined): v is { [k: string]: CborValue } {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function bad(at: string, what: string): never {
  throw new KpipError("PROTOCOL", `system.describe answered a malformed op table: ${at} ${what}`);
}

/** One field declaration as the kernel sends it, checked into a FieldSpec (recursively). */
function fieldSpec(v: CborValue | undefined, at: string): FieldSpec {
  if (!isMap(v)) return bad(at, "is not a map");
  const { type, required, nullable, description, items, values, fields } = v;
  if (typeof type !== "string" || !FIELD_TYPES.has(type)) bad(at, "has no known type");
  if (typeof description !== "string") bad(at, "has no description");
  const f: FieldSpec = { type: type as FieldType, description };
  if (required !== undefined) f.required = required === true;
  if (nullable === true) f.nullable = true;
  if (items !== undefined) f.items = fieldSpec(items, `${at}.items`);
  if (values !== undefined) f.values = fieldSpec(values, `${at}.values`);
  if (fields !== undefined) f.fields = shape(fields, `${at}.fields`);
  return f;
}

function shape(v: CborValue | undefined, at: string): Record<string, FieldSpec> {
  if (!isMap(v)) return bad(at, "is not a map");
  const out: Record<string, FieldSpec> = {};
  for (const [k, f] of Object.entries(v)) out[k] = fieldSpec(f, `${at}.${k}`);
  return out;
}

/**
 * The op table of `system.describe`, read into the gateway's declarations. The catalogue types a
 * field declaration as any map (it is recursive), so each is checked here rather than cast: a
 * kernel answering something else is a PROTOCOL error, not tools built from guesses.
 */
export function opTable(ops: readonly CborValue[]): OpDecl[] {
  return ops.map((o, i) => {
    const at = `ops[${i}]`;
    if (!isMap(o)) return bad(at, "is not a map");
    const { op, description, targets, idempotent, effects, args, result, authorizeAs, reach, sessionState } = o;
    if (typeof op !== "string" || typeof description !== "string") bad(at, "has no op or description");
    if (!Array.isArray(targets) || !targets.every((t) => typeof t === "string")) bad(`${at}.targets`, "is not a list of schemes");
    const d: OpDecl = {
      op,
      description,
      targets: targets as string[],
      idempotent: idempotent === true,
      effects: effects === true,
      args: shape(args, `${at}.args`),
    };
    if (result !== undefined) d.result = shape(result, `${at}.result`);
    if (typeof authorizeAs === "string") d.authorizeAs = authorizeAs;
    // An unknown reach is read as the widest: a pre-check may then skip a call, never widen one.
    if (reach !== undefined && reach !== null) d.reach = "subtree";
    if (sessionState !== undefined && sessionState !== null) {
      if (typeof sessionState !== "string") bad(`${at}.sessionState`, "is not text");
      d.sessionState = sessionState as string;
    }
    return d;
  });
}
