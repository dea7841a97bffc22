import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { type CborValue, decodeToken, generateIdentity } from "@kpip/protocol";
import { addPersonaKey, klass, removeHome, sandboxSkip, startKernel, type TestKernel, until } from "./harness.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

/** The audit records of `op` (outcomes of requests and the kernel's own acts), oldest first, their detail parsed. */
const records = (t: TestKernel, op: string) =>
  t.k.inspect
    .queryAudit({ op, limit: 1000 })
    .map((r) => ({ ...r, d: JSON.parse(r.detail ?? "null") as Record<string, unknown> }));

const idOf = (tok: Uint8Array) => decodeToken(tok).claims.id;

/** A token's status as token.inspect answers it to the admin. */
async function status(admin: KernelClient, tok: Uint8Array): Promise<string> {
  const r = await admin.call("token.inspect", `token://${idOf(tok)}`, { token: tok });
  return (r.payload as { status: string }).status;
}

/** An op's status as the admin sees it (op.status answers every op to the admin). */
async function opStatus(
  admin: KernelClient,
  id: string,
): Promise<{ state: string; errorClass?: string; message?: string; deadline?: number }> {
  return (await admin.call("op.status", `op://${id}`)).payload as { state: string; errorClass?: string; message?: string };
}

describe("a revocation reaches the whole refresh family", () => {
  it("revoking a refreshed copy ends the older copy, its refreshes and what was minted from any copy, across a restart", async () => {
    let t = await startKernel();
    const home = t.home;
    try {
      const admin = await t.admin();
      const carol = generateIdentity("carol");
      addPersonaKey(t, "carol", carol.publicKey);
      const rights = [
        { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["token.mint"], targets: ["persona://carol/**"] },
      ];
      const T = (await admin.tokens.mint("carol", { rights, ttlMs: 600_000, maxLifetimeMs: 3_600_000 })).token;
      const c = await t.connect(carol, []);
      const refresh = async (tok: Uint8Array) =>
        (
          (await c.call("token.refresh", `token://${idOf(tok)}`, { token: tok }, { caps: [tok] })).payload as {
            token: Uint8Array;
          }
        ).token;
      // Minted from the first copy before it was refreshed, and from the refreshed copy after.
      const fromT = (await c.tokens.mint("carol/helper", { rights: rights.slice(0, 1), ttlMs: 60_000 }, { caps: [T] })).token;
      const T1 = await refresh(T);
      const fromT1 = (await c.tokens.mint("carol/helper", { rights: rights.slice(0, 1), ttlMs: 60_000 }, { caps: [T1] })).token;
      await c.storage.write("obj://ws1/x", "1", { caps: [T1] });
      // A copy of an unrelated token of carol's: untouched.
      const other = (await admin.tokens.mint("carol", { rights: rights.slice(0, 1), ttlMs: 600_000 })).token;

      await admin.call("token.revoke", `token://${idOf(T1)}`);

      // The older copy is as revoked as the one named: no use, no refresh into a fresh copy.
      await assert.rejects(c.storage.write("obj://ws1/x", "2", { caps: [T] }), klass("CAPABILITY"));
      await assert.rejects(refresh(T), klass("CAPABILITY"));
      for (const tok of [T, T1, fromT, fromT1]) assert.equal(await status(admin, tok), "revoked", idOf(tok));
      assert.equal(await status(admin, other), "valid");
      await c.storage.write("obj://ws1/x", "3", { caps: [other] });
      // The revocation's record lists every token it ended, and the family's root revoked with it.
      const rec = records(t, "token.revoke").find((r) => r.phase === "outcome" && r.d.revoked === idOf(T1));
      assert.equal(rec?.d.family, idOf(T));
      assert.deepEqual([...((rec?.d.ended ?? []) as string[])].sort(), [T, T1, fromT, fromT1].map(idOf).sort());

      // Persisted: after a restart the older copy is still refused.
      await t.stop();
      t = await startKernel({}, home);
      const again = await t.connect(carol, []);
      await assert.rejects(again.storage.write("obj://ws1/x", "4", { caps: [T] }), klass("CAPABILITY"));
      await again.storage.write("obj://ws1/x", "5", { caps: [other] });
    } finally {
      await t.stop();
      removeHome(home);
    }
  });
});

describe("a revocation reaches what runs under the token", () => {
  it("revoking a token kills the agents and cancels the commands and tasks started under it, each ended on the record", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const admin = await t.admin();
      const rights = [
        { ops: ["agent.*"], targets: ["agent://**", "kernel://"] },
        { ops: ["compute.submit", "op.*"], targets: ["op://**"] },
      ];
      const dan = await t.persona("dan", rights);
      const eve = await t.persona("eve", rights);
      const d = await t.connect(dan.identity, [dan.token]);
      const e = await t.connect(eve.identity, [eve.token]);
      await d.call("agent.spawn", "agent://sleep/d1", { args: ["300"], rights: [], lifetimeMs: 600_000 });
      const submit = async (c: KernelClient, target: string, args: CborValue) =>
        ((await c.call("compute.submit", target, { args })).payload as { id: string }).id;
      const command = await submit(d, "op://command/sleep", ["300"]);
      // One worker: the first task runs, the second waits in the queue.
      const running = await submit(d, "op://task/hang", null);
      const queued = await submit(d, "op://task/hang", null);
      // Another persona's agent and command, under another token: untouched.
      await e.call("agent.spawn", "agent://sleep/e1", { args: ["300"], rights: [], lifetimeMs: 600_000 });
      const eves = await submit(e, "op://command/sleep", ["300"]);
      await until(async () => (await opStatus(admin, command)).state === "running", 30_000, "the command running");
      await until(async () => (await opStatus(admin, running)).state === "running", 30_000, "the task running");
      assert.equal((await opStatus(admin, queued)).state, "queued");

      await admin.call("token.revoke", `token://${dan.id}`);

      const agent = await until(
        () => {
          const a = t.k.inspect.getAgent("dan/sleep/d1");
          return a?.state === "killed" ? a : undefined;
        },
        30_000,
        "dan's agent killed",
      );
      assert.equal(agent.persona, "dan/agent.d1");
      const exited = await until(
        () => records(t, "agent.exited").find((r) => r.d.agent === "dan/sleep/d1"),
        30_000,
        "its exit recorded",
      );
      assert.equal(exited.d.killedBy, "token revoked");
      for (const op of [command, running, queued]) {
        const s = await until(
          async () => {
            const x = await opStatus(admin, op);
            return x.state === "queued" || x.state === "running" ? undefined : x;
          },
          30_000,
          `op ${op} ended`,
        );
        assert.equal(s.state, "cancelled", op);
        assert.equal(s.errorClass, "CAPABILITY", op);
        assert.match(s.message ?? "", new RegExp(`the token that authorized it \\(${dan.id}\\) was revoked`), op);
        assert.ok(
          records(t, "op.state").some(
            (r) =>
              r.target === `op://${op}` &&
              r.d.state === "cancelled" &&
              r.d.errorClass === "CAPABILITY" &&
              /revoked/.test(r.message ?? ""),
          ),
          `op ${op} cancelled on the record`,
        );
      }
      assert.equal(t.k.inspect.getAgent("eve/sleep/e1")?.state, "running");
      assert.equal((await opStatus(admin, eves)).state, "running");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("a command ends with the token that authorized it", () => {
  it("a command's deadline is capped at its authorizing token's expiry, and it is stopped there", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const admin = await t.admin();
      const p = await t.persona("fay", [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }], { ttlMs: 3_000 });
      const c = await t.connect(p.identity, [p.token]);
      const exp = decodeToken(p.token).claims.exp;
      const r = await c.call("compute.submit", "op://command/sleep", { args: ["300"], timeoutMs: 3_600_000 });
      const id = (r.payload as { id: string }).id;
      assert.equal((await opStatus(admin, id)).deadline, exp, "the token's expiry, not an hour");
      const s = await until(
        async () => {
          const x = await opStatus(admin, id);
          return x.state === "queued" || x.state === "running" ? undefined : x;
        },
        30_000,
        "the command stopped",
      );
      assert.equal(s.state, "failed");
      assert.equal(s.errorClass, "CAPABILITY");
      assert.match(s.message ?? "", new RegExp(`the token that authorized it \\(${p.id}\\) expired`));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
