import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../../", import.meta.url));

/** docs/security.md indexes tests by file and name; this keeps every reference true. */
describe("docs/security.md", () => {
  const doc = readFileSync(`${root}docs/security.md`, "utf8");
  const rows = doc.split("\n").filter((l) => /^\| \d+ \|/.test(l));

  it("catalogues at least 30 numbered cases, each with an outcome and a test", () => {
    assert.ok(rows.length >= 30, `${rows.length} cases`);
    const numbers = rows.map((r) => Number(/^\| (\d+) \|/.exec(r)?.[1]));
    assert.deepEqual(
      numbers,
      numbers.map((_, i) => i + 1),
      "cases are numbered 1..n in order",
    );
    for (const r of rows) {
      const cells = r.split(" | ");
      assert.equal(cells.length, 4, r);
      assert.ok((cells[2] ?? "").trim().length >= 5, `no expected outcome: ${r}`);
    }
  });

  it("every referenced test exists under that name in that file", () => {
    const missing: string[] = [];
    for (const r of rows) {
      const m = /`(packages\/[^`]+\.test\.ts)` › "([^"]+)"/.exec(r);
      if (!m) {
        missing.push(`no test reference: ${r.slice(0, 80)}`);
        continue;
      }
      const [, file, name] = m as unknown as [string, string, string];
      if (!existsSync(root + file)) missing.push(`${file}: no such file`);
      else if (!readFileSync(root + file, "utf8").includes(`"${name}"`)) missing.push(`${file}: no test "${name}"`);
    }
    assert.deepEqual(missing, []);
  });
});
