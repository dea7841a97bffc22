import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  type ArgsOf,
  BUILTIN_FAMILIES,
  checkShape,
  defineOp,
  isOp,
  type ResultOf,
  storageList,
  tokenMint,
  withoutNulls,
} from "../src/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

describe("op catalogue", () => {
  it("defines every op once, with a valid name, a target scheme and described fields", () => {
    const ops = BUILTIN_FAMILIES.flatMap((f) => f.ops);
    assert.equal(new Set(ops.map((d) => d.op)).size, ops.length, "no op is defined twice");
    for (const f of BUILTIN_FAMILIES) {
      for (const d of f.ops) {
        assert.ok(isOp(d.op), d.op);
        assert.ok(d.op.startsWith(`${f.name}.`) || (f.name === "compute" && d.op.startsWith("op.")), `${d.op} in ${f.name}`);
        assert.ok(d.targets.length > 0 && d.description.length > 0, d.op);
        const fields = [...Object.values(d.args), ...Object.values(d.result)];
        assert.ok(
          fields.every((x) => x.description.length > 0),
          `${d.op}: every field says what it is`,
        );
      }
    }
  });

  it("arguments: null is absent, unknown top-level keys are refused, records inside may carry more keys", () => {
    const args = tokenMint.args;
    assert.deepEqual(checkShape(args, { rights: [], ttlMs: 1, limits: null }, { mode: "args" }), undefined);
    assert.deepEqual(checkShape(args, { rights: [], ttlMs: 1, evil: 1 }, { mode: "args" }), { kind: "unknown", path: "evil" });
    assert.equal(checkShape(args, { rights: [], ttlMs: null }, { mode: "args" })?.kind, "missing");
    assert.equal(checkShape(args, { rights: [], ttlMs: -1 }, { mode: "args" })?.kind, "type");
    const right = { ops: ["a.b"], targets: ["kernel://"], note: "ignored" };
    assert.equal(checkShape(args, { rights: [right], ttlMs: 1 }, { mode: "args" }), undefined);
    assert.deepEqual(
      checkShape(args, { rights: [{ ops: ["a.b"], targets: ["kernel://", 1] }], ttlMs: 1 }, { mode: "args" })?.path,
      "rights[0].targets[1]",
    );
    assert.deepEqual(checkShape(args, { rights: [{ ops: ["a.b"] }], ttlMs: 1 }, { mode: "args" })?.path, "rights[0].targets");
    assert.deepEqual(checkShape(args, { rights: [], ttlMs: 1, limits: { x: "1" } }, { mode: "args" })?.path, "limits.x");
    // `constructor` is no argument of any op, though every object has one.
    assert.equal(checkShape(args, { rights: [], ttlMs: 1, constructor: 1 }, { mode: "args" })?.kind, "unknown");
  });

  it("payloads: every key declared at every depth, null only where nullable", () => {
    const r = storageList.result;
    assert.equal(checkShape(r, { items: [{ path: "a", size: 1, generation: 1 }] }, { mode: "payload" }), undefined);
    assert.deepEqual(checkShape(r, { items: [{ path: "a", size: 1, generation: 1, x: 1 }] }, { mode: "payload" }), {
      kind: "unknown",
      path: "items[0].x",
    });
    assert.equal(checkShape(r, { items: [], cursor: null }, { mode: "payload" })?.kind, "type");
    const nullable = defineOp({
      op: "x.y",
      description: "d",
      targets: ["kernel"],
      args: {},
      result: { v: { type: "any", nullable: true, required: true, description: "v" } },
      idempotent: true,
      effects: false,
    });
    assert.equal(checkShape(nullable.result, { v: null }, { mode: "payload" }), undefined);
  });

  it("withoutNulls drops null fields and keeps the map when there are none", () => {
    const m = { a: 1 };
    assert.equal(withoutNulls(m), m);
    assert.deepEqual(withoutNulls({ a: 1, b: null }), { a: 1 });
  });

  it("types come from the same literal: arguments and payloads are inferred", () => {
    const a: ArgsOf<typeof tokenMint> = { rights: [{ ops: ["x.y"], targets: ["kernel://"] }], ttlMs: 1 };
    const r: ResultOf<typeof storageList> = { items: [{ path: "p", size: 0, generation: 1 }] };
    // @ts-expect-error ttlMs is required
    const missing: ArgsOf<typeof tokenMint> = { rights: [] };
    assert.ok(a && r && missing);
  });

  it("docs/ops.md and the spec's Appendix C are what `npm run gen:ops` makes of the catalogue", () => {
    const r = spawnSync(process.execPath, ["scripts/gen-ops.mjs", "--check"], { cwd: ROOT, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
  });
});
