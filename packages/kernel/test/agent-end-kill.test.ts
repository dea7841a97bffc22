import assert from "node:assert/strict";
import { createHash } from "node:crypto";
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
 * A kernel in a child process that SIGKILLs itself just after it stored an end — `updateAgent`
 * (an agent's row `exited`, its token revoked) or `updateOp` (an op's row `succeeded`) — before
 * that end's records (`agent.exited`, `op.state`) reached the audit log: a kill (an OOM kill,
 * the operator) in the turn between the two.
 */
function kernelDyingAtEnd(home: string, method: "updateAgent" | "updateOp", state: string) {
  const code = `const { Kernel, SqliteStore } = await import(process.argv[1]);
const [method, state] = [process.argv[4], process.argv[5]];
const update = SqliteStore.prototype[method];
SqliteStore.prototype[method] = function (id, f, ...rest) {
  const v = update.call(this, id, f, ...rest);
  if (f.state === state) process.kill(process.pid, "SIGKILL");
  return v;
};
const k = new Kernel({ home: process.argv[2], logLevel: "silent", sandboxReadPaths: process.argv[3] });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
  return spawnReady(["--input-type=module", "-e", code, kernelModule, home, SANDBOX_READ_PATHS, method, state], "ready");
}

/**
 * On a home made by a clean run, a kernel dying at the end `method` stores while `act` runs
 * as the admin; then two starts on the home. Returns what `act` answered and the home (removed by the caller).
 */
async function killedAtEnd(
  home: string,
  method: "updateAgent" | "updateOp",
  state: string,
  act: (c: KernelClient) => Promise<string>,
): Promise<string> {
  await (await startKernel({}, home)).stop();
  const child = await kernelDyingAtEnd(home, method, state);
  const exited = new Promise((r) => child.once("exit", r));
  const c = await KernelClient.connect({
    socket: new Kernel({ home }).socketPath,
    identity: loadIdentity(join(home, "admin.identity")),
    tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
    reconnect: false,
  });
  let name: string;
  try {
    name = await act(c);
    await exited;
  } finally {
    await c.close().catch(() => {});
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
  // Twice: the first start records the end, the second finds nothing more to record.
  for (let i = 0; i < 2; i++) await (await startKernel({}, home)).stop();
  return name;
}

/** `sql`'s one column over the home's database, read without a kernel. */
function column(home: string, sql: string): unknown[] {
  const db = new Database(join(home, "kernel.db"), { readonly: true });
  try {
    return db.prepare(sql).pluck(true).all();
  } finally {
    db.close();
  }
}

describe("an end stored just before a kernel kill", { skip: sandboxSkip }, () => {
  it("an agent that ended just before its kernel was SIGKILLed has its end on the record after the next start", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      const agent = await killedAtEnd(home, "updateAgent", "exited", async (c) => {
        const args = ["-c", "printf hello; printf oops >&2; exit 0"];
        return (await c.agents.spawn("sh", "w1", { args, rights: [], lifetimeMs: 60_000 })).agent;
      });
      assert.deepEqual(column(home, "SELECT state FROM agents"), ["exited"], `${agent}'s end was stored before the kill`);
      const s = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.ok(verifyAudit(s).ok, "the chain verifies");
        const ends = s.queryAudit({ op: "agent.exited", limit: 10 });
        assert.equal(ends.length, 1, "the agent's end is on the record once");
        const detail = JSON.parse(ends[0]?.detail ?? "{}");
        assert.equal(detail.state, "exited");
        assert.equal(detail.code, 0);
        assert.equal(detail.recovered, true);
        assert.equal(ends[0]?.target, agent);
        // What it printed, as the record written at its end would name it (from its stored row).
        const digest = (x: string) => ({ sha256: createHash("sha256").update(x).digest("hex"), size: x.length });
        assert.deepEqual([detail.stdout, detail.stderr], [digest("hello"), digest("oops")]);
        // Its token's revocation, stored before the kill, is named by that record (refusals of the token say so).
        const revoked = column(home, `SELECT audit_seq FROM revocations WHERE id = '${detail.token}'`);
        assert.deepEqual(revoked, [ends[0]?.seq]);
      } finally {
        s.close();
      }
    } finally {
      removeHome(home);
    }
  });

  it("a command that ended just before its kernel was SIGKILLed has its op.state end on the record after the next start, not 'interrupted'", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      const op = await killedAtEnd(
        home,
        "updateOp",
        "succeeded",
        async (c) => (await c.compute.command("sh", ["-c", "exit 0"])).op,
      );
      assert.deepEqual(column(home, "SELECT state FROM ops"), ["succeeded"], `${op}'s end was stored before the kill`);
      const s = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.ok(verifyAudit(s).ok, "the chain verifies");
        const states = s
          .queryAudit({ op: "op.state", limit: 10 })
          .filter((r) => r.target === op)
          .map((r) => JSON.parse(r.detail ?? "{}"));
        const ends = states.filter((d) => d.state !== "created" && d.state !== "running");
        assert.equal(ends.length, 1, `the op's end is on the record once: ${JSON.stringify(states)}`);
        assert.equal(ends[0].state, "succeeded");
        assert.equal(ends[0].recovered, true);
        // What it left is named as on a record written at its end (the stored result's hashes).
        assert.equal(ends[0].result?.exitCode, 0, JSON.stringify(ends[0]));
        assert.equal(ends[0].result?.stdout?.size, 0);
      } finally {
        s.close();
      }
    } finally {
      removeHome(home);
    }
  });
});
