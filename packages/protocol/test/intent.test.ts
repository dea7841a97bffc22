import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  decodeIntent,
  encodeCanonical,
  encodeIntent,
  IntentError,
  intentHash,
  isName,
  isOp,
  isPersonaId,
  isWorkspaceId,
  NAME_RE,
  parseTarget,
  sha256,
  sha256Latin1,
} from "../src/index.js";

const semantic = (code: string) => (e: unknown) => e instanceof IntentError && e.errorClass === "SEMANTIC" && e.code === code;

describe("identifier grammar", () => {
  it("accepts dotted lowercase ops only", () => {
    for (const op of ["storage.write", "llm.generate", "a.b.c", "x1.y_2"]) assert.ok(isOp(op), op);
    for (const op of [
      "storage",
      "Storage.write",
      "storage..write",
      ".a.b",
      "a.b.",
      "a.1b",
      "a-b.c",
      "a.b c",
      `${"a".repeat(127)}.b`,
    ]) {
      assert.ok(!isOp(op), op);
    }
  });

  it("accepts hierarchical persona ids up to 8 levels", () => {
    for (const p of ["alice", "alice/worker-1", "a.b/c_d", "1/2/3/4/5/6/7/8"]) assert.ok(isPersonaId(p), p);
    for (const p of [
      "",
      "Alice",
      "alice/",
      "/alice",
      "alice//w",
      "a/../b",
      "..",
      ".a",
      "1/2/3/4/5/6/7/8/9",
      "a b",
      "a".repeat(65),
    ]) {
      assert.ok(!isPersonaId(p), p);
    }
    assert.ok(isWorkspaceId("ws1") && !isWorkspaceId("ws/1") && !isWorkspaceId("WS"));
  });

  it("scans names and persona ids exactly as the grammar's regex and split define them", () => {
    // the definitions the scanners replaced
    const nameDef = (s: string) => NAME_RE.test(s) && !s.includes("..");
    const personaDef = (id: string) => {
      if (id.length === 0 || id.length > 255) return false;
      const parts = id.split("/");
      return parts.length <= 8 && parts.every(nameDef);
    };
    const chars = fc.constantFrom(..."az09_.-/A \n\u00e9".split(""));
    const id = fc.oneof(
      fc.string({ unit: chars, maxLength: 80 }),
      fc.array(fc.string({ unit: chars, minLength: 0, maxLength: 66 }), { maxLength: 10 }).map((p) => p.join("/")),
      fc.string({ unit: fc.constantFrom(..."a0_.-/".split("")), maxLength: 70 }),
      fc.string({ maxLength: 20 }),
    );
    fc.assert(
      fc.property(id, (s) => {
        assert.equal(isName(s), nameDef(s), JSON.stringify(s));
        assert.equal(isPersonaId(s), personaDef(s), JSON.stringify(s));
      }),
      { numRuns: 5000 },
    );
  });

  it("parses targets and refuses every traversal and encoding trick", () => {
    assert.deepEqual(parseTarget("obj://ws1/a/b.txt"), { scheme: "obj", segments: ["ws1", "a", "b.txt"] });
    assert.deepEqual(parseTarget("kernel://"), { scheme: "kernel", segments: [] });
    assert.deepEqual(parseTarget("topic://a/*/**"), { scheme: "topic", segments: ["a", "*", "**"] });
    for (const t of [
      "obj://ws1/../ws2/x",
      "obj://ws1/a/./b",
      "obj://ws1/%2e%2e/x",
      "obj://ws1//x",
      "obj://ws1/x/",
      "obj://ws1/a\\b",
      "obj://WS1/x",
      "obj://ws1/a b",
      "obj://ws1/a\u0000",
      "obj://ws1/é",
      "obj://ws1/a?b",
      "obj://ws1/a#b",
      "obj://ws1/a*b",
      "file:///etc/passwd",
      "obj:/ws1/x",
      "obj://",
      `obj://ws1/${"a".repeat(2100)}`,
    ]) {
      assert.equal(typeof parseTarget(t), "string", t);
    }
  });
});

describe("intents", () => {
  const good = { op: "storage.write", target: "obj://ws1/a", args: { data: new Uint8Array([1]) } };

  it("encodes canonically: key order does not matter, the hash is SHA-256 of the bytes", () => {
    const a = encodeIntent(good);
    const b = encodeIntent({ args: { data: new Uint8Array([1]) }, target: "obj://ws1/a", op: "storage.write" });
    assert.deepEqual(a, b);
    assert.deepEqual(intentHash(a), createHash("sha256").update(a).digest());
    assert.deepEqual(decodeIntent(a), { ...good, args: { data: Buffer.from([1]) } });
  });

  it("sha256 and sha256Latin1 are SHA-256 (createHash) for any bytes, views at an offset included", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), fc.nat(16), (bytes, skip) => {
        const view = bytes.subarray(Math.min(skip, bytes.length));
        const want = createHash("sha256").update(view).digest();
        const got = sha256(view);
        assert.ok(Buffer.isBuffer(got));
        assert.equal(got.length, 32);
        assert.deepEqual(got, want);
        assert.deepEqual(intentHash(view), want);
        assert.equal(sha256Latin1(view), want.toString("latin1"));
      }),
      { numRuns: 500 },
    );
  });

  it("refuses malformed intents with SEMANTIC and the rule broken", () => {
    assert.throws(() => encodeIntent([] as never), semantic("NOT_A_MAP"));
    assert.throws(() => encodeIntent({ ...good, extra: 1 } as never), semantic("UNKNOWN_FIELD"));
    assert.throws(() => encodeIntent({ ...good, op: "Bad" }), semantic("BAD_OP"));
    assert.throws(() => encodeIntent({ ...good, target: "obj://ws1/../x" }), semantic("BAD_TARGET"));
    assert.throws(() => encodeIntent({ ...good, target: 5 } as never), semantic("BAD_TARGET"));
    assert.throws(() => encodeIntent({ ...good, args: [] } as never), semantic("BAD_ARGS"));
    assert.throws(() => encodeIntent({ ...good, constraints: { deadline: -1 } }), semantic("BAD_CONSTRAINTS"));
    assert.throws(() => encodeIntent({ ...good, constraints: { retry: 1 } } as never), semantic("BAD_CONSTRAINTS"));
    assert.throws(() => encodeIntent({ ...good, args: { x: 0.5 } }), semantic("UNSUPPORTED_TYPE"));
  });

  it("rejects non-canonical intent bytes instead of re-encoding them", () => {
    // the same intent with its keys out of canonical order
    const unsorted = Buffer.concat([
      Buffer.from("a3", "hex"),
      encodeCanonical("target"),
      encodeCanonical("obj://ws1/a"),
      encodeCanonical("op"),
      encodeCanonical("storage.read"),
      encodeCanonical("args"),
      encodeCanonical({}),
    ]);
    assert.throws(() => decodeIntent(unsorted), semantic("UNSORTED_KEYS"));
    assert.throws(() => decodeIntent(Buffer.from("a0", "hex")), semantic("BAD_OP"));
    assert.throws(() => decodeIntent(Buffer.from("ff", "hex")), semantic("MALFORMED"));
  });
});
