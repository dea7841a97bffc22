import type { CborMap, CborValue } from "../cbor/value.js";
import type { FieldSpec, FieldType, Shape } from "./define.js";

/** Why a map does not fit a shape: the first field that does not, by its path (`rights[0].ops`). */
export type ShapeProblem =
  | { kind: "unknown"; path: string }
  | { kind: "missing"; path: string; spec: FieldSpec }
  | { kind: "type"; path: string; spec: FieldSpec };

export interface ShapeCheck {
  /**
   * Arguments: a null field counts as absent, and maps inside the top level may carry keys the
   * shape does not name (they are ignored). Payloads: null only where `nullable`, and every key
   * at every depth is declared.
   */
  mode: "args" | "payload";
}

const isMap = (v: CborValue): v is CborMap =>
  typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);

/** Whether `v` has the CBOR type `type` (its elements and fields are checked separately). */
export function hasFieldType(type: FieldType, v: CborValue): boolean {
  switch (type) {
    case "bytes":
      return v instanceof Uint8Array;
    case "text":
      return typeof v === "string";
    case "uint":
      return typeof v === "number" && v >= 0;
    case "bool":
      return typeof v === "boolean";
    case "array":
      return Array.isArray(v);
    case "map":
      return isMap(v);
    default:
      return true;
  }
}

/** A field's path, `at` being its parent's path prefix: `rights[0]`, `rights[0].ops`. Built only for a problem. */
const pathOf = (at: string, key: string | number): string => (typeof key === "number" ? `${at}[${key}]` : `${at}${key}`);

function checkValue(spec: FieldSpec, v: CborValue, at: string, key: string | number, c: ShapeCheck): ShapeProblem | undefined {
  if (v === null && spec.nullable) return undefined;
  if (!hasFieldType(spec.type, v)) return { kind: "type", path: pathOf(at, key), spec };
  if (spec.items && Array.isArray(v)) {
    const path = pathOf(at, key);
    for (let i = 0; i < v.length; i++) {
      const p = checkValue(spec.items, v[i] as CborValue, path, i, c);
      if (p) return p;
    }
  }
  if ((spec.fields || spec.values) && isMap(v)) {
    const path = `${pathOf(at, key)}.`;
    if (spec.fields) {
      const p = checkFields(spec.fields, v, path, c, c.mode === "payload");
      if (p) return p;
    }
    if (spec.values) {
      for (const k of Object.keys(v)) {
        const p = checkValue(spec.values, v[k] as CborValue, path, k, c);
        if (p) return p;
      }
    }
  }
  return undefined;
}

// On every request's arguments: no array of entries and no path string per field (built for a problem only).
function checkFields(shape: Shape, m: CborMap, prefix: string, c: ShapeCheck, closed: boolean): ShapeProblem | undefined {
  if (closed) {
    // Own properties only: `constructor` or `toString` is no field of any shape. (for…in with
    // hasOwn: the same keys in the same order as Object.keys, without an array per request.)
    for (const k in m) if (Object.hasOwn(m, k) && !Object.hasOwn(shape, k)) return { kind: "unknown", path: `${prefix}${k}` };
  }
  for (const k in shape) {
    const spec = shape[k] as FieldSpec;
    const v = m[k];
    const absent = v === undefined || (v === null && c.mode === "args");
    if (absent) {
      if (spec.required) return { kind: "missing", path: `${prefix}${k}`, spec };
      continue;
    }
    const p = checkValue(spec, v as CborValue, prefix, k, c);
    if (p) return p;
  }
  return undefined;
}

/** The first way `m` does not fit `shape` (unknown keys at its top level always count), or undefined. */
export function checkShape(shape: Shape, m: CborMap, c: ShapeCheck): ShapeProblem | undefined {
  return checkFields(shape, m, "", c, true);
}

/** `m` without its null and undefined fields: arguments as a handler reads them (null is absent). */
export function withoutNulls(m: CborMap): CborMap {
  // The usual request has no null argument: it costs one pass over the keys and no copy.
  const keys = Object.keys(m);
  if (!keys.some((k) => m[k] === null || m[k] === undefined)) return m;
  const out: CborMap = {};
  for (const k of keys) if (m[k] !== null && m[k] !== undefined) out[k] = m[k] as CborValue;
  return out;
}
