import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import {
  attenuate,
  CodecError,
  DEFAULT_LIMITS,
  decodeIntent,
  encodeCanonical,
  KpipError,
  mintToken,
  type Right,
  storageList,
  tokenMint,
  tokenToString,
} from "@kpip/protocol";
import { opTable } from "../src/describe.js";
import { GrantView } from "../src/grant.js";
import { InputError, inputSchema, intentBoundPassed, type OpDecl, parseToolArgs } from "../src/schema.js";

const op = (name: string, targets: string[], args: OpDecl["args"] = {}): OpDecl => ({
  op: name,
  description: name,
  targets,
  idempotent: false,
  effects: true,
  args,
});
const TABLE = [
  op("system.describe", ["kernel"]),
  op("storage.read", ["obj"]),
  op("storage.write", ["obj"], { data: { type: "any", required: true, description: "d" } }),
  op("storage.list", ["obj"]),
  op("token.mint", ["persona"]),
  op("event.emit", ["topic"]),
];

function token(rights: Right[], caveats: Parameters<typeof attenuate>[1][] = []): string {
  const now = Date.now();
  let t = mintToken(randomBytes(32), {
    id: randomBytes(16).toString("hex"),
    kid: "k1",
    sub: "alice",
    rights,
    limits: {},
    nbf: now - 1000,
    exp: now + 60_000,
    maxExp: now + 60_000,
    chain: [],
  });
  for (const c of caveats) t = attenuate(t, c);
  return tokenToString(t);
}

describe("which ops the gateway lists (it never lists more than the token allows)", () => {
  it("lists an op only when a right names it on a target of one of its schemes", () => {
    const g = new GrantView([token([{ ops: ["storage.*", "system.describe"], targets: ["obj://ws1/**", "kernel://"] }])]);
    assert.deepEqual(
      g.allowedOps(TABLE).map((x) => x.decl.op),
      ["storage.list", "storage.read", "storage.write", "system.describe"],
    );
    assert.deepEqual(g.targetsFor("storage.write", ["obj"]), ["obj://ws1/**"]);
    // event.emit is in no right; a topic:// target names none of the rights either
    assert.deepEqual(
      new GrantView([token([{ ops: ["**"], targets: ["obj://ws1/**"] }])]).targetsFor("event.emit", ["topic"]),
      [],
    );
  });

  it("follows the token's caveats: an offline-attenuated token lists only what is left", () => {
    const g = new GrantView([
      token(
        [{ ops: ["**"], targets: ["**"] }],
        [
          { t: "ops", v: ["storage.read", "system.describe"] },
          { t: "targets", v: ["obj://ws1/**", "kernel://"] },
        ],
      ),
    ]);
    assert.deepEqual(
      g.allowedOps(TABLE).map((x) => x.decl.op),
      ["storage.read", "system.describe"],
    );
    assert.equal(g.allows("storage.read", "obj://ws2/x"), false);
    const expired = new GrantView([token([{ ops: ["**"], targets: ["**"] }], [{ t: "exp", v: Date.now() - 1 }])]);
    assert.deepEqual(expired.allowedOps(TABLE), []);
  });

  it("lists resources under the prefixes whose whole subtree a storage.list pattern covers, as the kernel authorizes a listing", () => {
    const g = new GrantView([
      token([
        {
          ops: ["storage.list"],
          targets: ["obj://ws1/**", "obj://ws1/notes/*", "obj://ws2/a/*/b", "obj://ws3/*/**", "obj://ws4/pub/*", "obj://**"],
        },
      ]),
    ]);
    // obj://ws4/pub/* reaches only the objects one level down: listing obj://ws4/pub would answer deeper ones.
    assert.deepEqual(g.listPrefixes(), ["obj://ws1"]);
    const sub = new GrantView([token([{ ops: ["storage.list"], targets: ["obj://ws2/a/**", "obj://ws2/a/b/**"] }])]);
    assert.deepEqual(sub.listPrefixes(), ["obj://ws2/a"]);
    assert.equal(sub.allows("storage.list", "obj://ws2/a/b", storageList), true);
    assert.equal(sub.allows("storage.list", "obj://ws2", storageList), false);
    // A target caveat narrower than the rights leaves no subtree to list.
    const narrowed = new GrantView([
      token([{ ops: ["storage.list"], targets: ["obj://ws5/**"] }], [{ t: "targets", v: ["obj://ws5/pub/*"] }]),
    ]);
    assert.deepEqual(narrowed.listPrefixes(), []);
  });
});

describe("tool arguments are checked against the op's declaration before anything is sent", () => {
  const write = TABLE[2] as OpDecl;
  const bad = (input: unknown, re: RegExp) =>
    assert.throws(
      () => parseToolArgs(write, input),
      (e) => e instanceof InputError && re.test(e.message),
    );

  it("accepts {target, args} with bytes as {$bytes: base64}", () => {
    const r = parseToolArgs(write, { target: "obj://ws1/a", args: { data: { $bytes: "AAH/" } } });
    assert.deepEqual(r, { target: "obj://ws1/a", args: { data: Buffer.from([0, 1, 255]) } });
    assert.deepEqual(parseToolArgs(TABLE[0] as OpDecl, {}), { target: "kernel://", args: {} }, "kernel:// is the default target");
  });

  it("refuses fractions, bad base64, unknown keys, wrong schemes and missing arguments", () => {
    bad({ target: "obj://ws1/a", args: { data: 1.5 } }, /only integers/);
    bad({ target: "obj://ws1/a", args: { data: { $bytes: "not base64!" } } }, /base64/);
    // The refusal names where the value is.
    bad({ target: "obj://ws1/a", args: { data: [0, { a: [1, 1.5] }] } }, /^args\.data\[1\]\.a\[1\]: only integers/);
    bad({ target: "obj://ws1/a", args: { data: { b: { $bytes: "!" } } } }, /^args\.data\.b\.\$bytes must be standard base64/);
    bad({ target: "obj://ws1/a", args: { data: "x" }, extra: 1 }, /unknown argument "extra"/);
    bad({ target: "topic://x", args: { data: "x" } }, /targets of scheme obj:\/\//);
    bad({ target: "obj://ws1/a" }, /args\.data is required/);
    bad("just text", /must be an object/);
    bad({ target: 7, args: { data: "x" } }, /target is required/);
  });
});

describe("the kernel's decode bounds on the intent a tool call makes (PROTOCOL §5.4)", () => {
  const anyArg = { data: { type: "any", required: false, description: "d" } } as const;
  const write = op("event.emit", ["topic"], anyArg);
  const kernelOp = op("system.poke", ["kernel"], anyArg);
  /** What the kernel does with the intent the gateway would send: the bound it refuses it for, or undefined. */
  const kernel = (d: OpDecl, input: unknown): string | undefined => {
    const { target, args } = parseToolArgs(d, input);
    try {
      decodeIntent(encodeCanonical({ op: d.op, target, args }));
      return undefined;
    } catch (e) {
      assert.ok(e instanceof CodecError, String(e));
      return { TOO_MANY_ITEMS: "maxItems", TOO_DEEP: "maxDepth" }[e.code] ?? e.code;
    }
  };
  const same = (d: OpDecl, input: unknown, expected: string | undefined, what: string) => {
    assert.equal(kernel(d, input), expected, `the kernel, ${what}`);
    assert.equal(intentBoundPassed(input)?.bound, expected, `the gateway, ${what}`);
  };
  const max = DEFAULT_LIMITS.maxItems;

  it("counts items as the kernel's decoder does: the same verdict at the bound and one past it", () => {
    // {op, target, args: {data: [...]}}: the map, op and target (key and value), args (key and
    // map), data (key and array): 9 items around the elements.
    const around = 9;
    const nulls = (n: number) => ({ target: "topic://t", args: { data: Array(n).fill(null) } });
    same(write, nulls(max - around), undefined, "an array at the bound");
    same(write, nulls(max - around + 1), "maxItems", "an array one past");
    // An object's entry is two items (key and value).
    const keys = (n: number, extra: unknown[] = []) => {
      const data: Record<string, unknown> = {};
      for (let i = 0; i < n; i++) data[`k${i}`] = 0;
      return { target: "topic://t", args: { data: [data, ...extra] } };
    };
    // around + the object itself, then 2 a key: one null fills the odd item.
    const n = Math.floor((max - around - 1) / 2);
    same(write, keys(n, Array(max - around - 1 - 2 * n).fill(null)), undefined, "keys at the bound");
    same(write, keys(n, Array(max - around - 2 * n).fill(null)), "maxItems", "keys one past");
    // Bytes are one item, not an object of two.
    const bytes = (k: number) => ({ target: "topic://t", args: { data: Array(k).fill({ $bytes: "aGk=" }) } });
    same(write, bytes(max - around), undefined, "byte strings at the bound");
    same(write, bytes(max - around + 1), "maxItems", "byte strings one past");
    // The target and args the gateway supplies when they are left out count too.
    const defaulted = (k: number) => ({ args: { data: Array(k).fill(0) } });
    same(kernelOp, defaulted(max - around), undefined, "kernel:// supplied, at the bound");
    same(kernelOp, defaulted(max - around + 1), "maxItems", "kernel:// supplied, one past");
    same(kernelOp, {}, undefined, "nothing given");
  });

  it("stops at the bound: an object whose keys alone pass it is refused before any of its values is read", () => {
    const data: Record<string, number> = {};
    for (let i = 0; i < 60_000; i++) data[`k${i}`] = i;
    let reads = 0;
    const counted = new Proxy(data, {
      get: (o, k) => {
        reads++;
        return Reflect.get(o, k);
      },
    });
    assert.deepEqual(intentBoundPassed({ target: "topic://t", args: { data: counted } }), {
      bound: "maxItems",
      limit: max,
    });
    assert.equal(reads, 0);
  });

  it("measures depth as the kernel does: a container at depth 32 is past it, bytes there are not", () => {
    // The intent is depth 0, args 1, data 2.
    const nest = (levels: number, inner: unknown) => {
      let v = inner;
      for (let i = 0; i < levels; i++) v = [v];
      return { target: "topic://t", args: { data: v } };
    };
    same(write, nest(30, 1), undefined, "the last array at depth 31");
    same(write, nest(31, 1), "maxDepth", "an array at depth 32");
    same(write, nest(30, { $bytes: "aGk=" }), undefined, "bytes at depth 32");
    same(write, nest(30, {}), "maxDepth", "an object at depth 32");
  });
});

describe("input schemas follow the op catalogue's fields into arrays and records", () => {
  it("token.mint: rights are records with required op and target lists; limits are integers by name", () => {
    const decl: OpDecl = { ...tokenMint, targets: [...tokenMint.targets] };
    const schema = inputSchema(decl, ["persona://alice/**"]) as {
      properties: { args: { properties: Record<string, Record<string, unknown>>; required: string[] } };
    };
    const args = schema.properties.args;
    assert.deepEqual(args.required, ["rights", "ttlMs"]);
    const rights = args.properties.rights as { type: string; items: { properties: Record<string, unknown>; required: string[] } };
    assert.equal(rights.type, "array");
    assert.deepEqual(rights.items.required, ["ops", "targets"]);
    assert.deepEqual((rights.items.properties.ops as { items: unknown }).items, { type: "string", description: "an op pattern" });
    assert.deepEqual((args.properties.limits as { additionalProperties: unknown }).additionalProperties, {
      type: "integer",
      minimum: 0,
      description: "the limit",
    });
  });
});

describe("the op table from system.describe", () => {
  const op = {
    op: "storage.upload.begin",
    description: "d",
    targets: ["obj"],
    idempotent: false,
    effects: true,
    args: {
      size: { type: "uint", required: true, description: "s" },
      meta: { type: "map", required: false, description: "m", values: { type: "text", required: false, description: "v" } },
    },
    authorizeAs: "storage.write",
  };

  it("reads each field declaration into a FieldSpec, with authorizeAs", () => {
    const [d] = opTable([op]);
    assert.equal(d?.authorizeAs, "storage.write");
    assert.deepEqual(d?.args.meta?.values, { type: "text", required: false, description: "v" });
    assert.equal(d?.sessionState, undefined);
    assert.equal(opTable([{ ...op, sessionState: "a lease" }])[0]?.sessionState, "a lease");
    assert.equal(d?.reach, undefined);
    assert.equal(opTable([{ ...op, reach: "subtree" }])[0]?.reach, "subtree");
  });

  it("refuses a malformed table with PROTOCOL instead of building tools from guesses", () => {
    for (const bad of [
      "not a map",
      { ...op, targets: "obj" },
      { ...op, args: { size: { type: "float", description: "s" } } },
      { ...op, args: { size: { type: "uint" } } },
      { ...op, args: { size: { type: "array", description: "a", items: 3 } } },
      { ...op, op: 7 },
      { ...op, sessionState: true },
    ]) {
      assert.throws(
        () => opTable([bad as never]),
        (e: unknown) => e instanceof KpipError && e.errorClass === "PROTOCOL",
        JSON.stringify(bad),
      );
    }
  });
});
