import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Kernel } from "@kpip/kernel";
import Database from "better-sqlite3";
import { hashTree } from "./evidence.js";
import { connectAdmin } from "./run.js";

const MAIN = fileURLToPath(new URL("../src/main.js", import.meta.url));
/** Counts without end: a statement reading it never returns (better-sqlite3 cannot interrupt one). */
const ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";

describe("audit tools on a home whose schema runs SQL of its own", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-hostile-schema-"));
  const made: string[] = [home];
  // The CLI's private copies are made here: none may be left behind.
  const scratch = mkdtempSync(join(tmpdir(), "kpip-hostile-schema-scratch-"));
  made.push(scratch);

  before(async () => {
    const k = new Kernel({ home, logLevel: "silent" });
    await k.start();
    try {
      const c = await connectAdmin(home);
      for (let i = 0; i < 3; i++) await c.storage.write(`obj://ws/${i}`, new TextEncoder().encode(`v${i}`));
      await c.close();
    } finally {
      await k.stop();
    }
  });
  after(() => {
    for (const d of made) rmSync(d, { recursive: true, force: true });
  });

  /** A copy of the home whose database `sql` has changed, as someone who held the machine could. */
  const tampered = (sql: string): string => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-hostile-schema-home-"));
    made.push(dir);
    cpSync(home, dir, { recursive: true });
    const db = new Database(join(dir, "kernel.db"));
    db.exec(sql);
    db.close();
    return dir;
  };
  // A guard only (a hang fails the case instead of the run): each run ends at once when it holds.
  const run = (args: string[]) => {
    const r = spawnSync(process.execPath, [MAIN, "audit", ...args], {
      encoding: "utf8",
      timeout: 120_000,
      env: { ...process.env, TMPDIR: scratch },
    });
    return { code: r.status, signal: r.signal, out: r.stdout, err: r.stderr };
  };

  it("a view in place of a table the tools read, a trigger their indexing of the tail fires, a generated column or an expression index: refused as tampered evidence, never run, nothing changed", () => {
    const cases: [string, string, string[], RegExp][] = [
      [
        "audit_batches a view that never ends",
        `ALTER TABLE audit_batches RENAME TO batches_kept; CREATE VIEW audit_batches (first_seq, last_seq, segment, offset, length) AS ${ENDLESS.replace("SELECT x FROM c", "SELECT x, x, 1, 0, 10 FROM c")};`,
        ["timeline"],
        /view audit_batches/,
      ],
      [
        "tokens a view that never ends",
        `ALTER TABLE tokens RENAME TO tokens_kept; CREATE VIEW tokens AS SELECT t.* FROM tokens_kept t, (${ENDLESS});`,
        ["tokens"],
        /view tokens/,
      ],
      [
        "a trigger on audit_batches that never ends, fired by the tail's indexing into the private copy",
        `CREATE VIEW endless AS ${ENDLESS};
         DELETE FROM audit_batches WHERE first_seq = (SELECT max(first_seq) FROM audit_batches);
         CREATE TRIGGER indexed AFTER INSERT ON audit_batches BEGIN SELECT count(*) FROM endless; END;`,
        ["verify"],
        /trigger indexed on audit_batches/,
      ],
      [
        "a generated column of a gigabyte a row, an index on an expression",
        "ALTER TABLE tokens ADD COLUMN pad BLOB AS (zeroblob(1000000000)); CREATE INDEX meta_len ON meta (length(value));",
        ["tokens"],
        /generated column tokens\.pad, index meta_len on an expression/,
      ],
      [
        "a check constraint on audit_batches of thousands of costly terms, evaluated by the tail's indexing; a partial index on audit_checkpoints",
        `PRAGMA ignore_check_constraints = ON;
         CREATE TABLE batches (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL,
           length INTEGER NOT NULL, CHECK (${Array(900).fill("length(hex(zeroblob(1000000 + length)))").join(" + ")} > 0));
         INSERT INTO batches SELECT * FROM audit_batches WHERE first_seq < (SELECT max(first_seq) FROM audit_batches);
         DROP TABLE audit_batches; ALTER TABLE batches RENAME TO audit_batches;
         CREATE INDEX recent ON audit_checkpoints (seq) WHERE time > 0;`,
        ["verify"],
        /check constraint on audit_batches, partial index recent on audit_checkpoints/,
      ],
      ["a virtual table", "CREATE VIRTUAL TABLE notes USING fts5 (body);", ["query"], /virtual table notes/],
    ];
    for (const [what, sql, sub, names] of cases) {
      const dir = tampered(sql);
      const before = hashTree(dir);
      // One of them read as JSON too: the refusal's class and text in the error line.
      for (const json of sub[0] === "timeline" ? [false, true] : [false]) {
        const r = run([...sub, "--home", dir, ...(json ? ["--json"] : [])]);
        assert.equal(r.signal, null, `${what}: ended only by the guard`);
        assert.equal(r.code, 1, `${what}: ${r.out}${r.err}`);
        const said = json ? (JSON.parse(r.out.trim()) as { error: string; message: string }) : undefined;
        if (said) assert.equal(said.error, "HomeReadError", what);
        assert.match(said?.message ?? r.err, /no kpip kernel makes/, what);
        assert.match(said?.message ?? r.err, names, what);
        assert.doesNotMatch(r.err, /\n\s+at /, `${what}: no stack trace`);
      }
      assert.deepEqual(hashTree(dir), before, `${what}: the evidence is left as it was`);
    }
    assert.deepEqual(readdirSync(scratch), [], "no private copy left behind");
    // The kernel's own home, with its trigger, is read as before.
    for (const sub of [["timeline"], ["verify"], ["tokens"]]) {
      const r = run([...sub, "--home", home]);
      assert.equal(r.code, 0, `${sub[0]}: ${r.out}${r.err}`);
    }
  });
});
