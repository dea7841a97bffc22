import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { SqliteStore, verifyAudit } from "../src/index.js";
import { connectAdminOf, removeHome, SANDBOX_READ_PATHS, sandboxSkip, spawnReady, startKernel, until } from "./harness.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/** `sql`'s one column over the home's database, read without a kernel (the kernel's writes are committed rows). */
function column(home: string, sql: string, ...params: unknown[]): unknown[] {
  const db = new Database(join(home, "kernel.db"), { readonly: true });
  try {
    return db
      .prepare(sql)
      .pluck(true)
      .all(...params);
  } finally {
    db.close();
  }
}

// agent.kill revokes the agent's token at the kill, on the record (case 642). A kernel killed
// before the agent's process closed left its row "running": the next start's recovery revoked
// the token again and wrote a second token.revoked record for a revocation already recorded.

describe("an agent killed just before its kernel was SIGKILLed", { skip: sandboxSkip }, () => {
  it("its token's revocation, recorded at the kill, is not recorded again by the next start", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    // A kernel whose SIGKILLs to anything but itself never land: the killed agent's process does not close.
    const code = `const { Kernel } = await import(process.argv[1]);
const kill = process.kill;
process.kill = function (pid, sig) {
  if (sig === "SIGKILL" && pid !== process.pid) return true;
  return kill.call(process, pid, sig);
};
await new Kernel({ home: process.argv[2], logLevel: "silent", sandboxReadPaths: process.argv[3] }).start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
    try {
      await (await startKernel({}, home)).stop();
      const child = await spawnReady(["--input-type=module", "-e", code, kernelModule, home, SANDBOX_READ_PATHS], "ready");
      const exited = new Promise((r) => child.once("exit", r));
      let token: string;
      try {
        const c = await connectAdminOf(home);
        try {
          const a = await c.agents.spawn("sh", "k1", { args: ["-c", "sleep 600"], rights: [], lifetimeMs: 60_000 });
          token = column(home, "SELECT token_id FROM agents")[0] as string;
          assert.equal(await c.agents.kill(a.agent), true);
        } finally {
          await c.close().catch(() => {});
        }
        // The kill's revocation and its record both committed (the record noted as the revocation's).
        await until(
          () => (column(home, "SELECT audit_seq FROM revocations WHERE id = ?", token)[0] ?? undefined) as number | undefined,
          30_000,
          "the kill's token.revoked record",
        );
        assert.deepEqual(column(home, "SELECT state FROM agents"), ["running"], "the agent's process has not closed");
        child.kill("SIGKILL");
        await exited;
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      for (let i = 0; i < 2; i++) await (await startKernel({}, home)).stop();
      assert.deepEqual(column(home, "SELECT state FROM agents"), ["lost"]);
      const s = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.ok(verifyAudit(s).ok, "the chain verifies");
        const revoked = s
          .queryAudit({ op: "token.revoked", limit: 100 })
          .filter((r) => JSON.parse(r.detail ?? "{}").revoked === token);
        assert.equal(revoked.length, 1, `one record of the revocation: ${JSON.stringify(revoked.map((r) => r.message))}`);
        assert.equal(s.queryAudit({ op: "agent.exited", limit: 10 }).length, 1, "its end is on the record, once");
      } finally {
        s.close();
      }
    } finally {
      removeHome(home);
    }
  });
});
