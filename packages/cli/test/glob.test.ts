import assert from "node:assert/strict";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import fc from "fast-check";
import { patternTest } from "../src/audit/filters.js";
import { sqliteGlob } from "../src/audit/glob.js";

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
