import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KernelClient, loadIdentity } from "@kpip/client";
import Database from "better-sqlite3";
import { Kernel, SqliteStore, verifyAudit } from "../src/index.js";
import { removeHome, SANDBOX_READ_PATHS, sandboxSkip, spawnReady, startKernel } from "./harness.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/**
 * A kernel in a child process that SIGKILLs itself just after it stored an agent's end (its row
 * `exited`, its token revoked), before that end's records (`agent.exited`, `token.revoked`,
 * `persona.removed`) reached the audit log: a kill (an OOM kill, the operator) in the turn
 * between the two.
 */
function kernelDyingAtAgentEnd(home: string) {
  const code = `const { Kernel, SqliteStore } = await import(process.argv[1]);
const update = SqliteStore.prototype.updateAgent;
SqliteStore.prototype.updateAgent = function (id, f, ...rest) {
  const v = update.call(this, id, f, ...rest);
  if (f.state === "exited") process.kill(process.pid, "SIGKILL");
  return v;
};
const k = new Kernel({ home: process.argv[2], logLevel: "silent", sandboxReadPaths: JSON.parse(process.argv[3]) });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
  return spawnReady(["--input-type=module", "-e", code, kernelModule, home, JSON.stringify(SANDBOX_READ_PATHS)], "ready");
}

describe("an agent's end and a kernel kill", () => {
  it("an agent that ended just before its kernel was SIGKILLed has its end on the record after the next start", {
    skip: sandboxSkip,
  }, async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      // The home made by a first, clean run.
      const first = await startKernel({}, home);
      await first.stop();
      const child = await kernelDyingAtAgentEnd(home);
      let agent = "";
      const exited = new Promise((r) => child.once("exit", r));
      const c = await KernelClient.connect({
        socket: new Kernel({ home }).socketPath,
        identity: loadIdentity(join(home, "admin.identity")),
        tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
        reconnect: false,
      });
      try {
        const a = await c.agents.spawn("sh", "w1", { args: ["-c", "exit 0"], rights: [], lifetimeMs: 60_000 });
        agent = a.agent;
        await exited;
      } finally {
        await c.close().catch(() => {});
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      // Twice: the first start records the end, the second finds nothing more to record.
      for (let i = 0; i < 2; i++) await (await startKernel({}, home)).stop();
      const s = new SqliteStore(join(home, "kernel.db"));
      try {
        const rows = new Database(join(home, "kernel.db"), { readonly: true });
        try {
          const states = rows.prepare("SELECT state FROM agents").pluck(true).all();
          assert.deepEqual(states, ["exited"], `${agent}'s end was stored before the kill`);
        } finally {
          rows.close();
        }
        assert.ok(verifyAudit(s).ok, "the chain verifies");
        const ends = s.queryAudit({ op: "agent.exited", limit: 10 });
        assert.equal(ends.length, 1, "the agent's end is on the record once");
        const detail = JSON.parse(ends[0]?.detail ?? "{}");
        assert.equal(detail.state, "exited");
        assert.equal(detail.code, 0);
        assert.equal(detail.recovered, true);
        assert.equal(ends[0]?.target, agent);
      } finally {
        s.close();
      }
    } finally {
      removeHome(home);
    }
  });
});
