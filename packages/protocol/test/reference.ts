import { Decoder } from "cbor-x";
import type { CborValue } from "../src/cbor/value.js";
import { DEFAULT_LIMITS, type DecodeLimits } from "../src/constants.js";
import { CborError } from "../src/errors.js";
import { validateCanonical } from "./canonical-validate.js";

/**
 * The two-pass decoder that src/cbor/decode.ts replaced, kept as its reference for the tests
 * and the codec bench: validate.ts proves the bytes canonical and bounded, then cbor-x decodes
 * them. Only tests and benches load cbor-x.
 */
const decoder = new Decoder({
  useRecords: false,
  mapsAsObjects: true,
  int64AsNumber: false,
  structuredClone: false,
  bundleStrings: false,
} as ConstructorParameters<typeof Decoder>[0]);

/** Decodes one KPIP canonical CBOR item in two passes. Throws {@link CborError}; never anything else. */
export function decodeCanonicalReference(bytes: Uint8Array, limits: DecodeLimits = DEFAULT_LIMITS): CborValue {
  const info = validateCanonical(bytes, limits);
  let value: CborValue;
  try {
    value = decoder.decode(bytes) as CborValue;
  } catch (e) {
    // Unreachable for validated input; kept typed so a decoder bug never escapes as a bare error.
    throw new CborError("MALFORMED", `decoder rejected validated input: ${(e as Error).message}`);
  }
  return info.wideIntegers ? normaliseIntegers(value) : value;
}

/** cbor-x yields a bigint for every 8-byte head; the data model wants a number when it is safe. */
function normaliseIntegers(v: CborValue): CborValue {
  if (typeof v === "bigint") {
    return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
  }
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = normaliseIntegers(v[i] as CborValue);
    return v;
  }
  if (v !== null && typeof v === "object" && !(v instanceof Uint8Array)) {
    for (const k of Object.keys(v)) v[k] = normaliseIntegers(v[k] as CborValue);
  }
  return v;
}
