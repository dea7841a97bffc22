import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import type { AuditLog } from "../src/audit/log.js";
import type { AuditRow } from "../src/store/types.js";
import { removeHome, sandboxSkip, startKernel, type TestKernel, until } from "./harness.js";

// A killed agent's end records no second token.revoked when its kill revoked its token already.
// It did not ask whether the kill's record was ever written: dropped (a full disk with no room
// left to keep it, a failed write), the revocation had no record at all.

/** The next token.revoked record the kernel appends fails; `fail` rejects it (at once, or when the test says). */
function dropNextRevocation(t: TestKernel): { fail(): void; taken: Promise<void> } {
  const audit = (t.k as unknown as { services: { audit: AuditLog } }).services.audit;
  const append = audit.appendRow.bind(audit);
  let fail = () => {};
  let took = () => {};
  const taken = new Promise<void>((resolve) => {
    took = resolve;
  });
  audit.appendRow = (row: AuditRow, ...rest: unknown[]) => {
    if (row.op !== "token.revoked") return (append as (r: AuditRow, ...a: unknown[]) => Promise<void>)(row, ...rest);
    audit.appendRow = append;
    took();
    return new Promise<void>((_, reject) => {
      fail = () => reject(Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR" }));
    });
  };
  return {
    fail: () => fail(),
    taken,
  };
}

async function spawnSleeper(t: TestKernel): Promise<{ c: KernelClient; agent: string; token: string }> {
  const eve = await t.persona("eve", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
  const c = await t.connect(eve.identity, [eve.token]);
  const a = await c.agents.spawn("sh", "k1", { args: ["-c", "sleep 600"], rights: [], lifetimeMs: 600_000 });
  return { c, agent: a.agent as string, token: a.token as string };
}

const rowsOf = (t: TestKernel, op: string, target: string) =>
  t.k.inspect.queryAudit({ op, limit: 100 }).filter((r) => r.target === target);

describe("a killed agent's revocation whose kill record was dropped", () => {
  it("dropped before its process closed: its end records the revocation", { skip: sandboxSkip }, async () => {
    const t = await startKernel();
    try {
      const { c, agent, token } = await spawnSleeper(t);
      const drop = dropNextRevocation(t);
      void drop.taken.then(() => drop.fail());
      assert.equal(await c.agents.kill(agent), true);
      await until(() => rowsOf(t, "agent.exited", agent).length > 0, 30_000, "agent.exited");
      await until(() => rowsOf(t, "token.revoked", `token://${token}`).length > 0, 30_000, "the revocation on the record");
      assert.equal(rowsOf(t, "token.revoked", `token://${token}`).length, 1, "once");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("dropped after its end left the revocation to it: made again, once", { skip: sandboxSkip }, async () => {
    const t = await startKernel();
    try {
      const { c, agent, token } = await spawnSleeper(t);
      const drop = dropNextRevocation(t);
      assert.equal(await c.agents.kill(agent), true);
      await drop.taken;
      await until(() => rowsOf(t, "agent.exited", agent).length > 0, 30_000, "agent.exited");
      assert.equal(rowsOf(t, "token.revoked", `token://${token}`).length, 0, "the kill's record is still on its way");
      drop.fail();
      await until(() => rowsOf(t, "token.revoked", `token://${token}`).length > 0, 30_000, "the revocation on the record");
      assert.equal(rowsOf(t, "token.revoked", `token://${token}`).length, 1, "once");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("an ended agent's revocation record dropped at its end", () => {
  it("an agent that exits on its own, its end's token.revoked dropped: made again, once", { skip: sandboxSkip }, async () => {
    const t = await startKernel();
    try {
      const eve = await t.persona("eve", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
      const c = await t.connect(eve.identity, [eve.token]);
      const drop = dropNextRevocation(t);
      void drop.taken.then(() => drop.fail());
      const a = await c.agents.spawn("sh", "e1", { args: ["-c", "exit 0"], rights: [], lifetimeMs: 600_000 });
      const [agent, token] = [a.agent as string, a.token as string];
      await until(() => rowsOf(t, "agent.exited", agent).length > 0, 30_000, "agent.exited");
      await drop.taken;
      await until(() => rowsOf(t, "token.revoked", `token://${token}`).length > 0, 30_000, "the revocation on the record");
      assert.equal(rowsOf(t, "token.revoked", `token://${token}`).length, 1, "once");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a killed agent whose kill record and end record are both dropped: the end's is made again, once", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const { c, agent, token } = await spawnSleeper(t);
      const kill = dropNextRevocation(t);
      void kill.taken.then(() => {
        kill.fail();
        // The next one is the end's (the kill's was dropped): dropped too.
        const end = dropNextRevocation(t);
        void end.taken.then(() => end.fail());
      });
      assert.equal(await c.agents.kill(agent), true);
      await until(() => rowsOf(t, "agent.exited", agent).length > 0, 30_000, "agent.exited");
      await until(() => rowsOf(t, "token.revoked", `token://${token}`).length > 0, 30_000, "the revocation on the record");
      assert.equal(rowsOf(t, "token.revoked", `token://${token}`).length, 1, "once");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
