import fc from "fast-check";

const SURROGATES = 0x800;

/**
 * Any code point but a lone surrogate (the set of fast-check's unit "binary"), ASCII and the BMP
 * often. "binary" itself takes 1.3 s of CPU to build, many seconds on a busy machine: built at a
 * module's top, outside every test, it made a file outlive its tests by that much.
 */
export const anyCodePoint = fc
  .oneof(fc.nat(0x7f), fc.nat(0xffff - SURROGATES), fc.nat(0x10ffff - SURROGATES))
  .map((c) => String.fromCodePoint(c < 0xd800 ? c : c + SURROGATES));
