import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KpipError } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import type { AuditRow } from "../src/store/types.js";
import { addPersonaKey, until, withKernel } from "./harness.js";

// A persona probing what it may do hides its probes in a flood of decoy refusals: past the
// refusal rate they are counted into one aggregate record per session and tick. The
// investigator must still see what was tried.

interface Aggregate {
  ops?: Record<string, number>;
  targets?: string[];
}

describe("refusals over the audit rate", () => {
  it("the aggregate record of refusals over the rate names the ops tried and the first distinct targets", async () => {
    await withKernel({ auditRefusalRate: 1, auditRefusalPersonaRate: 1 }, async (t) => {
      const eve = generateIdentity("eve");
      addPersonaKey(t, "eve", eve.publicKey);
      const c = await t.connect(eve, []);
      const refused = (op: string, target: string) =>
        assert.rejects(c.call(op, target, {}), (e) => e instanceof KpipError && e.errorClass === "CAPABILITY");
      const sent: [string, string][] = [];
      // Decoys past the burst (5× the rate), then the probes that matter.
      for (let i = 0; i < 30; i++) sent.push(["storage.read", "obj://decoy/x"]);
      sent.push(
        ["storage.read", "obj://admin/secret"],
        ["persona.register", "persona://eve2"],
        ["token.mint", "persona://admin"],
      );
      for (const [op, target] of sent) await refused(op, target);
      const mine = () => t.k.inspect.queryAudit({ persona: "eve", limit: 10_000 }).filter((r) => r.phase === "refused");
      const counted = (rows: AuditRow[]) =>
        rows.reduce((n, r) => n + (r.op === "audit.suppressed" ? Number(/^(\d+) refusals/.exec(r.message ?? "")?.[1]) : 1), 0);
      const rows = await until(
        () => (counted(mine()) === sent.length ? mine() : undefined),
        30_000,
        "every refusal accounted for",
      );
      const aggregates = rows.filter((r) => r.op === "audit.suppressed").map((r) => JSON.parse(r.detail ?? "{}") as Aggregate);
      assert.ok(aggregates.length > 0, "some refusals were over the rate");
      for (const [op, target] of sent.slice(30)) {
        const single = rows.some((r) => r.op === op && r.target === target);
        const inAggregate = aggregates.some((a) => (a.ops?.[op] ?? 0) > 0 && a.targets?.includes(target));
        assert.ok(single || inAggregate, `the probe ${op} ${target} is on the record: ${JSON.stringify(aggregates)}`);
      }
      const total = aggregates.reduce((n, a) => n + Object.values(a.ops ?? {}).reduce((x, y) => x + y, 0), 0);
      assert.equal(
        total,
        rows.filter((r) => r.op === "audit.suppressed").reduce((n, r) => n + Number(/^(\d+)/.exec(r.message ?? "")?.[1]), 0),
      );
    });
  });
});
