import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, mock } from "node:test";
import { AuditLog } from "../src/audit/log.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome } from "./harness.js";

/*
 * Case 606's retry: a timed checkpoint refused room is tried again at the next housekeeping tick.
 * The clock is the test's (Date mocked), so an hour's interval is one step: kept as the failed
 * attempt's time, the checkpoint waited another whole interval.
 */
describe("the audit's timed checkpoint after a failure", () => {
  it("a timed checkpoint that failed is tried again at the next tick (once a tick), not a whole interval later", async () => {
    mock.timers.enable({ apis: ["Date"], now: 1_000_000 });
    const home = mkdtempSync(join(tmpdir(), "kpip-cp-retry-"));
    const s = new SqliteStore(join(home, "kernel.db"));
    s.useAuditSegments(join(home, "audit"));
    const HOUR = 3_600_000;
    const log = new AuditLog(s, "k-cp", generateKeyPairSync("ed25519").privateKey, {
      batchMax: 512,
      checkpointEvery: 10_000,
      checkpointIntervalMs: HOUR,
    });
    const add = s.addCheckpoint.bind(s);
    let attempts = 0;
    let full = true;
    s.addCheckpoint = (c) => {
      attempts++;
      if (full) throw Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
      add(c);
    };
    try {
      const done = log.append({ session: "s", persona: "admin", phase: "complete", requestId: 1, op: "system.health" });
      log.flush();
      await done;
      mock.timers.tick(HOUR);
      assert.throws(() => log.checkpointIfDue(), /disk is full/);
      assert.equal(attempts, 1);
      // The next tick, the disk still full: tried again (once), and again refused.
      mock.timers.tick(500);
      assert.throws(() => log.checkpointIfDue(), /disk is full/);
      assert.equal(attempts, 2, "tried again at the next tick");
      // Room again: the next tick stores it.
      full = false;
      mock.timers.tick(500);
      log.checkpointIfDue();
      assert.equal(attempts, 3);
      assert.equal(s.checkpoints().at(-1)?.seq, 1, "the checkpoint is stored");
      // Stored: the next is due an interval after it, not at every tick.
      mock.timers.tick(500);
      log.append({ session: "s", persona: "admin", phase: "complete", requestId: 2, op: "system.health" }).catch(() => {});
      log.flush();
      log.checkpointIfDue();
      assert.equal(attempts, 3, "not due again before its interval");
    } finally {
      mock.timers.reset();
      log.close();
      s.close();
      removeHome(home);
    }
  });
});
