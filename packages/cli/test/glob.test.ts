import assert from "node:assert/strict";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import fc from "fast-check";
import { globMatcher, MAX_PATTERN, patternTest } from "../src/audit/filters.js";
import { pathGlob, sqliteGlob } from "../src/audit/glob.js";

/** SQLite's own GLOB, the definition sqliteGlob and `kpip audit query`'s filter are pinned to. */
function withSqlite<T>(f: (glob: (pattern: string, s: string) => boolean) => T): T {
  const db = new Database(":memory:");
  const q = db.prepare("SELECT ? GLOB ?").pluck(true);
  try {
    return f((pattern, s) => q.get(s, pattern) === 1);
  } finally {
    db.close();
  }
}

// Every character GLOB gives a meaning, a few plain ones, non-ASCII (two and four UTF-8 bytes).
const PATTERN_CHARS = ["*", "?", "[", "]", "^", "-", "!", "a", "b", "c", "z", "/", ".", "é", "😀"];
const VALUE_CHARS = ["a", "b", "c", "z", "/", ".", "]", "[", "-", "^", "*", "?", "é", "😀"];
const text = (chars: string[], max: number) => fc.array(fc.constantFrom(...chars), { maxLength: max }).map((a) => a.join(""));

describe("kpip audit query's glob: SQLite's GLOB", () => {
  it("answers as SQLite's GLOB on generated patterns and values", () => {
    withSqlite((glob) =>
      fc.assert(
        fc.property(text(PATTERN_CHARS, 9), fc.array(text(VALUE_CHARS, 8), { minLength: 1, maxLength: 8 }), (p, values) => {
          const t = sqliteGlob(p);
          for (const v of values) assert.equal(t(v), glob(p, v), `${JSON.stringify(v)} GLOB ${JSON.stringify(p)}`);
        }),
        { numRuns: 3000 },
      ),
    );
  });

  it("the bracket forms a regex translation got wrong, as SQLite answers them", () => {
    const cases: [string, string][] = [
      ["[*]*", "*x"],
      ["[*]*", "ax"],
      ["[]]*", "]x"],
      ["[]]*", "x"],
      ["[^]]*", "]"],
      ["[^]]*", "a"],
      ["[^a]*", "b"],
      ["[^a]*", "a"],
      ["*[a-]", "x-"],
      ["*[-a]", "x-"],
      ["*[a-c-e]", "x-"],
      ["*[a-c-e]", "xd"],
      ["*[\\]", "x\\"],
      ["*[?]", "x?"],
      ["*[?]", "xa"],
      ["a*[b", "ab"],
      ["*]", "x]"],
      ["*[é-😀]", "xz"],
      ["*[é-😀]", "xé"],
    ];
    withSqlite((glob) => {
      for (const [p, v] of cases) {
        assert.equal(sqliteGlob(p)(v), glob(p, v), `${JSON.stringify(v)} GLOB ${JSON.stringify(p)}`);
        // patternTest: ** as *; with any of * ? [ it is the GLOB (every case here has one).
        assert.equal(patternTest(p)(v), glob(p, v), `--persona ${JSON.stringify(p)} on ${JSON.stringify(v)}`);
      }
    });
  });

  it("a long run of stars does not take exponential time", () => {
    const t = sqliteGlob(`${"*a".repeat(30)}*b`);
    assert.equal(t("a".repeat(200)), false);
  });
});

describe("kpip audit timeline's path glob (pathGlob, globMatcher)", () => {
  // Without the separator in the value, `*` and `**` are both any run: SQLite's GLOB answers.
  it("on values without the separator it answers as SQLite's GLOB (any run of stars as one)", () => {
    const noSep = VALUE_CHARS.filter((c) => c !== "/");
    withSqlite((glob) =>
      fc.assert(
        fc.property(text(PATTERN_CHARS, 9), fc.array(text(noSep, 8), { minLength: 1, maxLength: 8 }), (p, values) => {
          const t = pathGlob(p, "/");
          const sql = p.replace(/\*+/g, "*");
          for (const v of values) assert.equal(t(v), glob(sql, v), `${JSON.stringify(v)} on ${JSON.stringify(p)}`);
        }),
        { numRuns: 2000 },
      ),
    );
  });

  it("with separators: * and ? stay within a segment, ** crosses (against a regex on small inputs)", () => {
    const reference = (p: string) => {
      let re = "";
      for (let i = 0; i < p.length; i++) {
        if (p.startsWith("**", i)) {
          re += ".*";
          while (p[i + 1] === "*") i++;
        } else if (p[i] === "*") re += "[^/]*";
        else if (p[i] === "?") re += "[^/]";
        else re += (p[i] as string).replace(/[.]/g, "\\.");
      }
      return new RegExp(`^${re}$`, "u");
    };
    fc.assert(
      fc.property(
        text(["*", "?", "a", "b", "/", "."], 8),
        fc.array(text(["a", "b", "/", "."], 7), { maxLength: 8 }),
        (p, values) => {
          const t = pathGlob(p, "/");
          const r = reference(p);
          for (const v of values) assert.equal(t(v), r.test(v), `${JSON.stringify(v)} on ${JSON.stringify(p)}`);
        },
      ),
      { numRuns: 3000 },
    );
    // Sets never match the separator; the rest of SQLite's set syntax holds.
    assert.equal(pathGlob("a[/]b", "/")("a/b"), false);
    assert.equal(pathGlob("a[^x]b", "/")("a/b"), false);
    assert.equal(pathGlob("a[^x]b", "/")("a.b"), true);
    assert.equal(pathGlob("obj://p/[a-c]*", "/")("obj://p/beta"), true);
    assert.equal(pathGlob("obj://p/[a-c]*", "/")("obj://p/delta"), false);
    assert.equal(pathGlob("obj://p/x[", "/")("obj://p/x["), false, "a [ never closed matches nothing");
    assert.equal(pathGlob("a]", "/")("a]"), true, "a ] alone is itself");
  });

  it("regular-expression syntax in a pattern is itself, not a regex", () => {
    const cases: [string, "/" | ".", string, boolean][] = [
      ["a+b*", "/", "a+bc", true],
      ["a+b*", "/", "aab", false],
      ["(a|b)*", "/", "(a|b)x", true],
      ["(a|b)*", "/", "ax", false],
      [".*", "/", ".x", true],
      [".*", "/", "ab", false],
      ["\\d*", "/", "\\d1", true],
      ["\\d*", "/", "1", false],
      ["^a$*", "/", "^a$b", true],
      ["a{2}*", "/", "aa", false],
      ["storage.*", ".", "storage.read", true],
      ["storage.*", ".", "storageXread", false],
      ["persona://a/*", "/", "persona://a/b", true],
    ];
    for (const [p, sep, v, want] of cases) {
      assert.equal(globMatcher(p, sep)(v), want, `${JSON.stringify(v)} on ${JSON.stringify(p)}`);
      assert.equal(pathGlob(p, sep)(v), want);
    }
    // Without a wildcard: an exact name, or a prefix for targets; metacharacters are still themselves.
    assert.equal(globMatcher("a.b", ".")("a.b"), true);
    assert.equal(globMatcher("a.b", ".")("axb"), false);
    assert.equal(globMatcher("obj://a(", "/", true)("obj://a(b"), true);
  });

  it("hostile patterns: stars that made a regex backtrack end at once; a pattern over 4096 characters is a UsageError", () => {
    // A RegExp translation of `*a` × 12 took minutes on 40 characters; these walk each value once.
    const long = "a".repeat(2048);
    const segments = Array.from({ length: 64 }, () => "a".repeat(31)).join("/");
    for (const p of [`${"*a".repeat(30)}*b`, `${"**a".repeat(30)}**b`, `${"*a**".repeat(25)}b`, `${"?*".repeat(40)}b`]) {
      const t = globMatcher(p, "/");
      assert.equal(t(long), false, p);
      assert.equal(t(segments), false, p);
    }
    assert.equal(globMatcher(`${"**a".repeat(30)}**b`, "/")(`${segments}b`), true, "** crosses segments");
    assert.equal(globMatcher(`${"*a".repeat(30)}*b`, "/")(`${segments}b`), false, "* does not");
    // The longest pattern allowed, mostly stars and sets, against the longest value: bounded work.
    const widest = `${"*[a-z]".repeat(682)}**xy`;
    assert.equal(widest.length, MAX_PATTERN);
    assert.equal(globMatcher(widest, "/")(long), false);
    assert.throws(() => globMatcher("a".repeat(MAX_PATTERN + 1), "/", false, "--persona"), {
      name: "UsageError",
      message: `--persona is a pattern of at most ${MAX_PATTERN} characters (got ${MAX_PATTERN + 1})`,
    });
    assert.throws(() => patternTest("*".repeat(MAX_PATTERN + 1), "--op"), /--op is a pattern of at most 4096 characters/);
  });
});
