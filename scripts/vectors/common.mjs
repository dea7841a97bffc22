// The helpers and fixed inputs every vector file of scripts/gen-vectors.mjs shares.
import { writeFileSync } from "node:fs";
import { encodeIntent } from "../../packages/protocol/dist/src/index.js";

export const out = (name, doc) =>
  writeFileSync(new URL(`../../spec/vectors/${name}`, import.meta.url), `${JSON.stringify(doc, null, 2)}\n`);
export const hex = (b) => Buffer.from(b).toString("hex");
export const b = (h) => Buffer.from(h, "hex");
/** CBOR value → JSON-ish: byte strings {"$bytes": hex}, integers beyond ±2^53 {"$int": decimal}. */
export const j = (v) =>
  v instanceof Uint8Array
    ? { $bytes: hex(v) }
    : typeof v === "bigint"
      ? { $int: v.toString() }
      : Array.isArray(v)
        ? v.map(j)
        : v && typeof v === "object"
          ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, j(x)]))
          : v;

export const key32 = b("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8");
export const intentBytes = encodeIntent({
  op: "storage.write",
  target: "obj://ws1/notes/today.txt",
  args: { data: Buffer.from("hello") },
});
