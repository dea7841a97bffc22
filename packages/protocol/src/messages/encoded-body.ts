/**
 * A message body that already has its canonical CBOR bytes (the kernel encodes an effect's
 * response once, for its dedupe record, and sends those bytes): the frame encoder takes them
 * instead of encoding the body again. The mark is a non-enumerable symbol property: no CBOR
 * encoder, spread or JSON sees it, and a copy of the body (`{ ...r, error }`) has none. A marked
 * body must not change afterwards.
 */
const ENCODED = Symbol("kpip.encodedBody");

/** Marks `body` with its canonical encoding `bytes` (exactly `encodeCanonical(body)`); returns `body`. */
export function withEncodedBody<T extends object>(body: T, bytes: Uint8Array): T {
  Object.defineProperty(body, ENCODED, { value: bytes });
  return body;
}

/** The canonical bytes `body` was marked with, if any. */
export function encodedBody(body: object): Uint8Array | undefined {
  return (body as { [ENCODED]?: Uint8Array })[ENCODED];
}
