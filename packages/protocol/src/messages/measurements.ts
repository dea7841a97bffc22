import { encodeCanonical } from "../cbor/encode.js";
import type { CborMap } from "../cbor/value.js";
import { MAX_MEASUREMENTS_BYTES } from "../constants.js";

/**
 * ATTEST measurements as the record keeps them (canonical CBOR), or a RangeError naming the bound
 * when they are over {@link MAX_MEASUREMENTS_BYTES}: the client refuses them before connecting,
 * the kernel ends the handshake with it.
 */
export function encodeMeasurements(m: CborMap): Uint8Array {
  const bytes = encodeCanonical(m);
  if (bytes.length > MAX_MEASUREMENTS_BYTES)
    throw new RangeError(
      `the ATTEST measurements are ${bytes.length} bytes as canonical CBOR, at most ${MAX_MEASUREMENTS_BYTES}`,
    );
  return bytes;
}
