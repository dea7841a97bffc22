import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { openAuditReader } from "../src/audit/reader.js";
import { verifyAuditReader } from "../src/audit/verify-parallel.js";
import { withKernel } from "./harness.js";

// Pins the SQLite locking mode: with locking_mode=EXCLUSIVE (6 fewer syscalls a commit) a
// running kernel's database cannot be opened by anyone else — `kpip audit tail/query/verify`
// on a live home failed with "database is locked" (BENCHMARKS.md, "Fewer syscalls a commit").
describe("the read-only audit reader beside a running kernel", () => {
  it("opens the live database (no copy), verifies it, and the kernel keeps committing while it is open", async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      for (let i = 0; i < 20; i++) await c.call("system.health", "kernel://");
      const reader = openAuditReader(join(t.home, "kernel.db"));
      try {
        assert.equal(reader.snapshot, false, "read beside the kernel, not from a private copy");
        const before = reader.countAudit();
        assert.ok(before >= 20);
        const v = await verifyAuditReader(reader);
        assert.equal(v.ok, true, v.firstBad?.reason);
        for (let i = 0; i < 5; i++) await c.call("system.health", "kernel://");
        assert.ok(reader.countAudit() >= before + 5, "the reader sees the commits made while it is open");
      } finally {
        reader.close();
      }
    });
  });
});
