import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CommandWorker } from "@kpip/protocol/testing";
import { scopeOf } from "../src/audit/summary.js";
import { evidenceKernel } from "./evidence.js";
import { DISPATCH } from "./run.js";

// A persona hides one act in a flood of its own requests, none refused (so nothing is aggregated):
// the investigator who does not know what to look for needs the rare act to stand out.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

const json = (s: string) =>
  s
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe("a flood in the evidence", () => {
  it("audit timeline --summary counts a persona's rows by op, outcome and scope, rarest first, so one read hidden in a flood of writes is at the top", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-summary-evidence-"));
    try {
      await evidenceKernel(home, async ({ admin, as }) => {
        await admin.storage.write("obj://bobws/secret", new TextEncoder().encode("payroll"));
        const { client: asEve } = await as("eve", [
          { ops: ["storage.*"], targets: ["obj://evews/**"] },
          { ops: ["storage.read"], targets: ["obj://bobws/**"] },
        ]);
        const flood: Promise<unknown>[] = [];
        for (let i = 0; i < 300; i++) {
          flood.push(asEve.storage.write(`obj://evews/noise/${i % 50}`, new Uint8Array([i & 255])));
          if (i === 150) flood.push(asEve.storage.read("obj://bobws/secret"));
        }
        await Promise.all(flood);
      });
      const r = await cli.run(["audit", "timeline", "--summary", "--json", "--persona", "eve", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const groups = json(r.out) as { op: string; outcome: string; scope: string; count: number; firstSeq: number }[];
      assert.deepEqual(
        groups.map((g) => [g.count, g.op, g.outcome, g.scope]),
        [
          [1, "session.open", "SUCCESS", "-"],
          [1, "storage.read", "SUCCESS", "obj://bobws/"],
          [1, "session.close", "SUCCESS", "-"],
          [300, "storage.write", "SUCCESS", "obj://evews/"],
        ],
      );
      // Its first seq is the read's own row.
      const read = await cli.run(["audit", "timeline", "--json", "--persona", "eve", "--target", "obj://bobws/", "--home", home]);
      assert.deepEqual(
        json(read.out).map((x) => x.seq),
        [groups[1]?.firstSeq],
      );
      // --limit bounds the groups; the rest are counted on stderr.
      const two = await cli.run(["audit", "timeline", "--summary", "--limit", "2", "--persona", "eve", "--home", home]);
      assert.equal(two.code, 0, two.err);
      assert.match(two.out, /^count +persona +op +outcome +scope/);
      assert.equal(two.out.trim().split("\n").length, 3);
      assert.match(two.err, /2 groups shown \(rarest first\); 2 more/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("audit timeline --summary counts a persona's rows past 128 scopes of one op and outcome, or past 256 ops of one outcome, in one group, so refusals at topics and op names of its choosing neither fill the investigator's memory nor bury the act", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-summary-scopes-"));
    const floods = 200;
    try {
      // Every refusal on the record (the default rates aggregate past 100 a second, over time the same).
      const refusals = { auditRefusalRate: 10_000, auditRefusalPersonaRate: 10_000 };
      await evidenceKernel(
        home,
        async ({ admin, as }) => {
          await admin.storage.write("obj://bobws/secret", new TextEncoder().encode("payroll"));
          const { client: asEve } = await as("eve", [{ ops: ["storage.read"], targets: ["obj://bobws/**"] }]);
          // A topic's name is hers to choose, up to the target's 2 KiB: each refusal a scope of its own.
          const flood: Promise<unknown>[] = [];
          for (let i = 0; i < floods; i++)
            flood.push(asEve.call("event.emit", `topic://${String(i).padStart(1900, "x")}`, { data: 1 }).catch((e) => e));
          // An unknown op is refused SEMANTIC and recorded by the name it was sent with, hers too.
          for (let i = 0; i < 300; i++) flood.push(asEve.call(`zz${"q".repeat(90)}.a${i}`, "kernel://").catch((e) => e));
          await Promise.all(flood);
          await asEve.storage.read("obj://bobws/secret");
        },
        refusals,
      );
      const r = await cli.run([
        "audit",
        "timeline",
        "--summary",
        "--json",
        "--limit",
        "1000",
        "--persona",
        "eve",
        "--home",
        home,
      ]);
      assert.equal(r.code, 0, r.err);
      const groups = json(r.out) as { op: string; outcome: string; scope: string; count: number }[];
      const emits = groups.filter((g) => g.op === "event.emit");
      assert.equal(emits.length, 129, "128 scopes apart, the rest in one group");
      assert.deepEqual(
        emits.filter((g) => g.count > 1).map((g) => [g.count, g.outcome, g.scope]),
        [[floods - 128, "FAILURE/PERMISSION", "(scopes past the first 128: list them with --persona and --op)"]],
      );
      assert.equal(
        emits.reduce((n, g) => n + g.count, 0),
        floods,
        "every refusal counted",
      );
      const unknown = groups.filter((g) => g.outcome === "FAILURE/SEMANTIC");
      assert.equal(unknown.length, 257, "256 ops apart, the rest in one group");
      assert.deepEqual(
        unknown.filter((g) => g.count > 1).map((g) => [g.count, g.op, g.scope]),
        [[300 - 256, "(ops past the first 256)", "kernel://"]],
      );
      // The read keeps its own group (another op): the act the summary is there to show.
      assert.deepEqual(
        groups.filter((g) => g.op === "storage.read").map((g) => [g.count, g.outcome, g.scope]),
        [[1, "SUCCESS", "obj://bobws/"]],
      );
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("a scope is a target's first segment, or its scheme where that segment is an id", () => {
    assert.equal(scopeOf("obj://evews/noise/1"), "obj://evews/");
    assert.equal(scopeOf("obj://evews"), "obj://evews");
    assert.equal(scopeOf("op://command/sh"), "op://command/");
    assert.equal(scopeOf(`op://${"a".repeat(32)}`), "op://*");
    assert.equal(scopeOf(`token://${"0".repeat(32)}`), "token://*");
    assert.equal(scopeOf("kernel://"), "kernel://");
    assert.equal(scopeOf(null), "-");
  });
});
