import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { PRUNED_SPAN_PERSONAS, PrunedSpan } from "../src/audit/pruned-span.js";
import { removeHome, startKernel, until } from "./harness.js";

/** A home whose config file sets `settings`. */
function homeWith(settings: Record<string, unknown>): string {
  const home = mkdtempSync(join(tmpdir(), "kpip-pruned-span-"));
  writeFileSync(join(home, "config.json"), JSON.stringify(settings), { mode: 0o600 });
  return home;
}

interface Span {
  from: number;
  to: number;
  personas: Record<string, { records: number; intents: number; last: number }>;
}

describe("a retention pass says whose records it pruned", () => {
  it("a persona that floods the log until its own write is pruned is named in audit.pruned, its pruned effects counted", async () => {
    const home = homeWith({ auditCheckpointEvery: 10, auditRetainRecords: 25 });
    try {
      let t = await startKernel({}, home);
      const m = await t.persona("mallory", [{ ops: ["storage.*"], targets: ["obj://ws/**"] }]);
      const mallory = await t.connect(m.identity, [m.token]);
      await mallory.storage.write("obj://ws/loot", "what mallory did");
      // Within its grant: reads, each a record, until the write's records fall behind retention.
      for (let i = 0; i < 80; i++) await mallory.storage.read("obj://ws/loot");
      await t.stop();
      t = await startKernel({}, home);
      const pruned = await until(
        () => t.k.inspect.queryAudit({ op: "audit.pruned", limit: 1 })[0],
        30_000,
        "the first pruning pass's audit.pruned record",
      );
      const writes = t.k.inspect.queryAudit({ op: "storage.write", limit: 10 });
      await t.stop();
      assert.equal(writes.length, 0, "the write's records are gone from the log");
      const detail = JSON.parse(pruned.detail ?? "{}") as { through: number; records: number; span?: Span };
      assert.ok(detail.span, `the pruned record summarizes the span: ${pruned.detail}`);
      const span = detail.span;
      assert.ok(span.personas.mallory, `mallory's pruned records are named: ${pruned.detail}`);
      assert.equal(span.personas.mallory.intents, 1, "its one effect (the write's intent) is counted among them");
      assert.ok(span.personas.mallory.records > 1);
      const counted = Object.values(span.personas).reduce((n, c) => n + c.records, 0);
      assert.equal(counted, detail.records, "every pruned record is counted under its persona");
      assert.ok(span.from <= span.to && span.to <= pruned.time, "the span's times are the pruned records'");

      // A second flood, long enough to prune the record that named mallory: the pass that prunes it carries its summary.
      t = await startKernel({}, home);
      const again = await t.connect(m.identity, [m.token]);
      for (let i = 0; i < 80; i++) await again.storage.read("obj://ws/loot");
      await t.stop();
      t = await startKernel({}, home);
      const gone = await until(
        () => {
          const first = t.k.inspect.firstAuditSeq() ?? 1;
          return first > pruned.seq ? first : undefined;
        },
        30_000,
        "a pass that prunes the first audit.pruned record",
      );
      await until(
        () => ((t.k.inspect.queryAudit({ op: "audit.pruned", limit: 1 })[0]?.seq ?? 0) > gone ? true : undefined),
        30_000,
        "that pass's audit.pruned record",
      );
      const kept = t.k.inspect.queryAudit({ op: "audit.pruned", limit: 100 });
      await t.stop();
      assert.ok(!kept.some((r) => r.seq === pruned.seq), "the first pass's record is gone");
      const oldest = JSON.parse(kept[0]?.detail ?? "{}") as { span?: Span };
      assert.equal(oldest.span?.personas.mallory?.intents, 1, `the write is still counted: ${kept[0]?.detail}`);
      assert.equal(oldest.span?.from, span.from, "from the first pruned record on");
    } finally {
      removeHome(home);
    }
  });

  it("decoy personas with more records cannot push a persona with a pruned effect out of the names", () => {
    const span = new PrunedSpan();
    span.add({ time: 5, persona: "mallory", phase: "intent", op: "storage.write" });
    for (let d = 0; d < 100; d++)
      for (let i = 0; i < 10; i++) span.add({ time: 10 + i, persona: `decoy${d}`, phase: "complete", op: "storage.read" });
    const out = span.detail() as unknown as Span & { otherPersonas: { records: number; intents: number } };
    assert.equal(Object.keys(out.personas).length, PRUNED_SPAN_PERSONAS);
    assert.deepEqual(out.personas.mallory, { records: 1, intents: 1, last: 5 });
    assert.deepEqual(out.otherPersonas, { records: 1000 - 10 * (PRUNED_SPAN_PERSONAS - 1), intents: 0 });
    assert.equal(out.from, 5);
    assert.equal(out.to, 19);
    assert.equal(new PrunedSpan().detail(), undefined, "nothing pruned, nothing to say");
    // The record this summary goes into, pruned by a later pass: carried, with the later pass's own.
    const later = new PrunedSpan();
    later.add({ time: 30, persona: "-", phase: "kernel", op: "audit.pruned", detail: JSON.stringify({ through: 9, span: out }) });
    later.add({ time: 31, persona: "mallory", phase: "complete", op: "storage.read" });
    const carried = later.detail() as unknown as Span & { otherPersonas: { records: number; intents: number } };
    assert.deepEqual(carried.personas.mallory, { records: 2, intents: 1, last: 31 });
    assert.equal(carried.from, 5);
    assert.equal(carried.to, 31);
    assert.equal(
      carried.otherPersonas.records,
      out.otherPersonas.records + 1,
      "the unnamed still counted, the kernel's record too",
    );
  });
});
