/**
 * Canonical CBOR alone, with the decoder's limits: what a compute task worker needs (kernel
 * compute/worker.ts). Each new task worker imports it; the whole package took ~35 ms more per start.
 */
export { DEFAULT_LIMITS } from "../constants.js";
export { decodeCanonical } from "./decode.js";
export { encodeCanonical } from "./encode.js";
