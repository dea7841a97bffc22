import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Kernel } from "@kpip/kernel";
import { generateIdentity } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import Database from "better-sqlite3";
import { connectAdmin, DISPATCH } from "./run.js";

// The CLI changes a stopped kernel's home through its offline journal, which the next start moves
// onto the chain. A home preserved as evidence is never started: the audit tools must show it.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

describe("changes waiting in the offline journal", () => {
  it("audit timeline, query, tokens and verify name the CLI's changes no kernel has put on the chain yet", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-journal-evidence-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      try {
        const admin = await connectAdmin(home);
        await admin.personas.register("bob", generateIdentity("bob").publicKey);
        await admin.close();
      } finally {
        await k.stop();
      }
      // With the kernel down, someone with the home removes bob and plants a persona of their own.
      const rm = await cli.run(["persona", "remove", "bob", "--home", home]);
      assert.equal(rm.code, 0, rm.err);
      const add = await cli.run([
        "persona",
        "create",
        "mallory",
        "--out",
        join(home, "..", `${home.split("/").pop()}-m.id`),
        "--home",
        home,
      ]);
      assert.equal(add.code, 0, add.err);
      try {
        const changes = /2 changes made with the CLI while no kernel ran are in the home's offline journal/;
        for (const args of [["timeline"], ["query"], ["tokens"]]) {
          const r = await cli.run(["audit", ...args, "--home", home]);
          assert.equal(r.code, 0, r.err);
          assert.match(r.err, changes, args[0]);
          assert.match(r.err, /persona\.remove persona:\/\/bob by kpip persona/, args[0]);
          assert.match(r.err, /persona\.register persona:\/\/mallory/, args[0]);
        }
        const j = await cli.run(["audit", "timeline", "--json", "--home", home]);
        const note = j.err
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l) as { offlineJournal?: { count: number; changes: { op: string; target: string }[] } })
          .find((x) => x.offlineJournal)?.offlineJournal;
        assert.deepEqual(
          note?.changes.map((c) => [c.op, c.target]),
          [
            ["persona.remove", "persona://bob"],
            ["persona.register", "persona://mallory"],
          ],
        );
        const v = await cli.run(["audit", "verify", "--json", "--home", home]);
        assert.equal(v.code, 0, v.err);
        const warnings = (JSON.parse(v.out) as { warnings: string[] }).warnings;
        assert.ok(
          warnings.some((w) => changes.test(w)),
          JSON.stringify(warnings),
        );
        // Once a kernel has put them on the chain, there is nothing left to say.
        const again = new Kernel({ home, logLevel: "silent", sandbox: "none" });
        await again.start();
        await again.stop();
        const after = await cli.run(["audit", "timeline", "--op", "persona.*", "--home", home]);
        assert.doesNotMatch(after.err, /offline journal/);
        assert.match(after.out, /persona\.remove +persona:\/\/bob/);
      } finally {
        rmSync(join(home, "..", `${home.split("/").pop()}-m.id`), { force: true });
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
  it("a journal row whose id is not an integer (the table made again by whoever tampered with it) is named as such, never as journal NaN", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-journal-tampered-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      await k.stop();
      const add = await cli.run(["persona", "create", "mallory", "--out", join(home, "m.id"), "--home", home]);
      assert.equal(add.code, 0, add.err);
      const db = new Database(join(home, "kernel.db"));
      db.exec(`CREATE TABLE j2 (id, time, actor, op, target, message);
        INSERT INTO j2 SELECT 'forged', time, actor, op, target, message FROM offline_journal;
        INSERT INTO j2 SELECT 2.5, time, actor, op, target, message FROM offline_journal;
        DROP TABLE offline_journal; ALTER TABLE j2 RENAME TO offline_journal;`);
      db.close();
      const r = await cli.run(["audit", "timeline", "--home", home]);
      assert.equal(r.code, 0, r.err);
      assert.doesNotMatch(r.err, /NaN|journal 2\.5/);
      const lines = r.err.split("\n").filter((l) => /persona\.register persona:\/\/mallory/.test(l));
      assert.equal(lines.length, 2, r.err);
      for (const l of lines) assert.match(l, /^ {2}journal \(invalid id: tampered\) /);
      const j = await cli.run(["audit", "timeline", "--json", "--home", home]);
      const note = j.err
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { offlineJournal?: { changes: { id: unknown }[] } })
        .find((x) => x.offlineJournal)?.offlineJournal;
      assert.deepEqual(
        note?.changes.map((c) => c.id),
        [null, null],
      );
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
