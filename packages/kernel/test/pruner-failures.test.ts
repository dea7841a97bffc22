import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import { AuditLog } from "../src/audit/log.js";
import { PrunerFailures } from "../src/kernel/pruner-failures.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { until, withKernel } from "./harness.js";

type Line = { level: number; msg: string; pruner?: string; err?: { message: string }; unlogged?: number };

/** A logger that keeps every line, parsed. */
function recordingLogger() {
  const lines: Line[] = [];
  const logger = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { logger, lines };
}

const locked = () => new Error("database is locked");

describe("a pruner that fails is logged and counted, and the kernel keeps serving", () => {
  it("every housekeeping pruner throwing (a locked store): a warn line per pruner with its name and error, counted by pruner (audit retention too); system.health answers", async () => {
    const proto = SqliteStore.prototype as unknown as Record<string, unknown>;
    const names = ["pruneAgents", "pruneOps", "dedupeEnd", "pruneDedupe", "pruneTokens"] as const;
    const saved = names.map((n) => [n, Object.getOwnPropertyDescriptor(proto, n)] as const);
    const realPruneTokens = SqliteStore.prototype.pruneTokens;
    let tokenCalls = 0;
    for (const n of ["pruneAgents", "pruneOps", "dedupeEnd", "pruneDedupe"]) {
      proto[n] = () => {
        throw locked();
      };
    }
    // The start prunes tokens once itself (compose): that one runs; the housekeeping tick's throw.
    proto.pruneTokens = function (this: SqliteStore, before: number) {
      if (++tokenCalls === 1) return realPruneTokens.call(this, before);
      throw locked();
    };
    // Audit retention logs its own failures (at error); they are counted with the pruners'.
    const realPruneSlice = Object.getOwnPropertyDescriptor(AuditLog.prototype, "pruneSlice") as PropertyDescriptor;
    AuditLog.prototype.pruneSlice = () => {
      throw locked();
    };
    const { logger, lines } = recordingLogger();
    try {
      await withKernel({ logger, heartbeatMs: 200, auditRetainRecords: 10 }, async (t) => {
        const warned = (p: string) => lines.filter((l) => l.level === 40 && l.pruner === p);
        const counts = async () => {
          const m = await (t.k.metrics?.prunerFailures.get() ?? Promise.resolve({ values: [] }));
          return Object.fromEntries(m.values.map((v) => [String(v.labels.pruner), v.value]));
        };
        // The first tick runs them all (dedupe's first pass is the whole-table sweep); agents' runs every tick.
        await until(async () => ((await counts()).agents ?? 0) >= 3, 30_000, "the agents pruner failed on three ticks");
        for (const p of ["agents", "ops", "dedupe", "tokens"]) {
          const w = warned(p);
          assert.equal(w.length, 1, `${p}: one warn line (at most one a minute per pruner)`);
          assert.equal(w[0]?.msg, `the ${p} pruner failed; the next tick starts it again`);
          assert.equal(w[0]?.err?.message, "database is locked", `${p}: the error is on the line`);
        }
        const c = await counts();
        for (const p of ["ops", "dedupe", "tokens", "audit"]) assert.ok((c[p] ?? 0) >= 1, `${p} counted`);
        assert.ok(
          lines.some(
            (l) => l.level === 50 && l.err?.message === "database is locked" && /could not prune the audit log/.test(l.msg),
          ),
          "retention's own line",
        );
        // The kernel kept serving through the failures.
        const admin = await t.admin();
        assert.equal((await admin.system.health()).status, "ok");
        assert.equal((await admin.system.health()).status, "ok", "and again, after more ticks");
      });
    } finally {
      Object.defineProperty(AuditLog.prototype, "pruneSlice", realPruneSlice);
      for (const [n, d] of saved) {
        if (d) Object.defineProperty(proto, n, d);
        else delete proto[n];
      }
    }
  });

  it("PrunerFailures: counts every failure, logs a pruner at most once per interval with how many went unlogged", () => {
    const { logger, lines } = recordingLogger();
    const counted: string[] = [];
    let now = 1_000_000;
    const f = new PrunerFailures(logger, { inc: ({ pruner }) => counted.push(pruner) }, () => now, 60_000);
    f.failed("agents", locked());
    f.failed("agents", locked());
    f.failed("ops", new Error("SQLITE_BUSY"));
    now += 59_999;
    f.failed("agents", locked());
    now += 1;
    f.failed("agents", locked());
    assert.deepEqual(counted, ["agents", "agents", "ops", "agents", "agents"]);
    assert.deepEqual(
      lines.map((l) => [l.level, l.pruner, l.err?.message, l.unlogged]),
      [
        [40, "agents", "database is locked", undefined],
        [40, "ops", "SQLITE_BUSY", undefined],
        [40, "agents", "database is locked", 2],
      ],
    );
    // A failed bodies flush is not retried by a tick (its batch left the queue): the line says what recovers them.
    f.failed("bodies", new Error("EIO"));
    assert.equal(lines.at(-1)?.msg, "the bodies pruner failed; the bodies it was removing stay until the next start's sweep");
    // Not an Error: still logged, never thrown.
    f.failed("tokens", "a string");
    assert.equal(lines.at(-1)?.pruner, "tokens");
  });
});
