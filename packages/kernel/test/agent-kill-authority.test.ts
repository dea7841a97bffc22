import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type KernelClient, KpipError } from "@kpip/client";
import { parseIdentity } from "@kpip/protocol";
import { TokenService } from "../src/auth/tokens.js";
import { BlobStore } from "../src/store/blobs.js";
import { allocatingAgent, sigkillHolder } from "./agent-kill-kit.js";
import { klass, removeHome, sandboxSkip, startKernel, until } from "./harness.js";

const LEAKING_AGENT = fileURLToPath(new URL("../../test/fixtures/leaking-agent.mjs", import.meta.url));

/** The credentials the leaking agent prints on its stdout once it runs. */
function handedOut(c: KernelClient, agent: string): Promise<{ identity: string; token: string }> {
  return until(
    async () => {
      const out = Buffer.from((await c.agents.logs(agent)).stdout).toString();
      return out.includes("\n") ? (JSON.parse(out) as { identity: string; token: string }) : undefined;
    },
    30_000,
    "the agent's credentials, handed out",
  );
}

// agent.kill answered `killed: true` while the agent's process had not closed yet (a sandbox's
// teardown; a process in uninterruptible sleep, which SIGKILL reaches only when it leaves it):
// until then the agent's token and key held, so its requests in flight, and new ones from the
// sessions opened with its credentials, committed after the kill was answered and recorded.

describe("agent.kill ends the agent's authority when it is answered, not when its process closes", () => {
  it("a killed agent whose process has not closed yet writes nothing more: its write in flight is refused at its commit, its sessions end, its credentials no longer attest", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    const put = BlobStore.prototype.put;
    // A process slow to die: the SIGKILLs are held until the test lets them through.
    const { held, hold, release } = sigkillHolder();
    try {
      const gil = await t.persona("gil", [
        { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
        { ops: ["storage.*"], targets: ["obj://ws/**"] },
      ]);
      const c = await t.connect(gil.identity, [gil.token]);
      const a = await c.agents.spawn("node", "k1", {
        args: [LEAKING_AGENT],
        rights: [{ ops: ["storage.*"], targets: ["obj://ws/**"] }],
        lifetimeMs: 60_000,
      });
      const agent = a.agent as string;
      const boot = await handedOut(c, agent);
      const identity = parseIdentity(boot.identity);
      const other = await t.connect(identity, [boot.token]);
      await other.storage.write("obj://ws/before", "x");
      hold();
      // The kill is answered while the agent's write is in flight (its body going to the file store).
      let killed: Promise<boolean> | undefined;
      BlobStore.prototype.put = async function (this: BlobStore, data: Uint8Array) {
        killed ??= c.agents.kill(agent);
        await killed;
        return put.call(this, data);
      };
      const closed = new Promise<Error>((resolve) => other.once("closed", (e: Error) => resolve(e)));
      await assert.rejects(other.storage.write("obj://ws/big", Buffer.alloc(300_000, 1)), (e: unknown) => e instanceof KpipError);
      assert.equal(await killed, true);
      // The write reached its commit after the kill was answered: refused there, on the record.
      const outcome = await until(
        () =>
          t.k.inspect
            .queryAudit({ persona: a.persona, op: "storage.write", limit: 10 })
            .find((r) => r.phase === "outcome" && r.target === "obj://ws/big"),
        30_000,
        "the write's outcome",
      );
      BlobStore.prototype.put = put;
      assert.equal(outcome.status, "FAILURE");
      assert.ok(held.length > 0, "the agent's process has not been killed yet (its SIGKILL is held)");
      await assert.rejects(c.storage.stat("obj://ws/big"), klass("SEMANTIC", "no object"), "nothing was written");
      const err = await closed;
      assert.ok(err instanceof KpipError && err.code === "PERSONA_REMOVED", String(err));
      // Its credentials no longer open a session.
      await assert.rejects(t.connect(identity, [boot.token]), /attestation failed/i);
      // Nothing of the agent's committed after the kill's outcome record.
      const rows = t.k.inspect.queryAudit({ limit: 1000 });
      const killAt = rows.find((r) => r.op === "agent.kill" && r.phase === "outcome")?.seq ?? 0;
      assert.ok(killAt > 0);
      const after = rows.filter(
        (r) => r.persona === a.persona && r.seq > killAt && r.status === "SUCCESS" && r.op === "storage.write",
      );
      assert.deepEqual(after, [], "no write of the killed agent's succeeded after its kill was recorded");
      // Its process closes: its end is recorded once, its token revoked once.
      release();
      const exited = await until(
        () => t.k.inspect.queryAudit({ op: "agent.exited", limit: 10 }).find((r) => r.target === agent),
        30_000,
        "agent.exited",
      );
      assert.match(exited.detail ?? "", /"killedBy":"kill"/);
      const revoked = t.k.inspect
        .queryAudit({ op: "token.revoked", limit: 100 })
        .filter((r) => r.target === `token://${a.token}`);
      assert.equal(revoked.length, 1, "its token's revocation is on the record once, at its kill");
      assert.ok(revoked[0] && revoked[0].seq < (exited.seq as number));
    } finally {
      BlobStore.prototype.put = put;
      release();
      await t.stop();
      removeHome(t.home);
    }
  });
  it("an agent killed by a revocation of its token does not act on with a token minted for its persona id until its process closes", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    const kill = process.kill;
    // Its SIGKILL held: a process slow to die.
    process.kill = ((pid: number, sig?: string | number) =>
      sig === "SIGKILL" ? true : kill.call(process, pid, sig)) as typeof process.kill;
    try {
      const admin = await t.admin();
      const gil = await t.persona("gil", [
        { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
        { ops: ["storage.*"], targets: ["obj://ws/**"] },
        { ops: ["token.mint"], targets: ["persona://gil/**"] },
      ]);
      const c = await t.connect(gil.identity, [gil.token]);
      const a = await c.agents.spawn("node", "r1", {
        args: [LEAKING_AGENT],
        rights: [{ ops: ["storage.read"], targets: ["obj://ws/**"] }],
        lifetimeMs: 60_000,
      });
      const agent = a.agent as string;
      const boot = await handedOut(c, agent);
      // Its spawner gives it more: a token minted for its persona id, which ends with the agent.
      const more = await c.tokens.mint(a.persona as string, {
        rights: [{ ops: ["storage.*"], targets: ["obj://ws/**"] }],
        ttlMs: 600_000,
      });
      const other = await t.connect(parseIdentity(boot.identity), [boot.token, more.token]);
      await other.storage.write("obj://ws/before", "x");
      const closed = new Promise<Error>((resolve) => other.once("closed", (e: Error) => resolve(e)));
      // The admin revokes the agent's own token: the agent is killed.
      await admin.call("token.revoke", `token://${a.token}`);
      // Refused: by the kernel, or by the client once the kernel ended its session.
      await assert.rejects(other.storage.write("obj://ws/after", "y"));
      const err = await closed;
      assert.ok(err instanceof KpipError && err.code === "PERSONA_REMOVED", String(err));
      await assert.rejects(t.connect(parseIdentity(boot.identity), [more.token]), /attestation failed/i);
      const status = await admin.call("token.inspect", `token://${more.id}`, { token: more.token });
      assert.equal((status.payload as { status: string }).status, "revoked", "the token minted for its id ended with the kill");
      assert.equal(
        t.k.inspect.queryAudit({ persona: a.persona, op: "storage.write", limit: 10 }).filter((r) => r.status === "SUCCESS")
          .length,
        1,
        "only its write before the kill",
      );
    } finally {
      process.kill = kill;
      await t.stop();
      removeHome(t.home);
    }
  });
  it("an agent's lifetime ending while its revocation cannot be made is logged, the kernel serving on: its end revokes its token", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    const revokeNow = TokenService.prototype.revokeNow;
    let refused = 0;
    // The store refusing the kill's revocation once (from the lifetime's timer: a throw there ended the kernel).
    TokenService.prototype.revokeNow = function (this: TokenService, ...args: Parameters<TokenService["revokeNow"]>) {
      if (refused++ === 0) throw new Error("disk I/O error");
      return revokeNow.apply(this, args);
    };
    try {
      const gil = await t.persona("gil", [
        { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
        { ops: ["storage.*"], targets: ["obj://ws/**"] },
      ]);
      const c = await t.connect(gil.identity, [gil.token]);
      const a = await c.agents.spawn("node", "l1", {
        args: [LEAKING_AGENT],
        rights: [{ ops: ["storage.read"], targets: ["obj://ws/**"] }],
        lifetimeMs: 300,
      });
      const exited = await until(
        () => t.k.inspect.queryAudit({ op: "agent.exited", limit: 10 }).find((r) => r.target === a.agent),
        30_000,
        "agent.exited",
      );
      assert.match(exited.detail ?? "", /"killedBy":"lifetime"/);
      assert.ok(refused >= 2, "the kill's revocation was refused, its end's made");
      const revoked = t.k.inspect
        .queryAudit({ op: "token.revoked", limit: 100 })
        .filter((r) => r.target === `token://${a.token}`);
      assert.equal(revoked.length, 1, "its token revoked at its end");
      await c.storage.write("obj://ws/after", "x"); // the kernel serves on
    } finally {
      TokenService.prototype.revokeNow = revokeNow;
      await t.stop();
      removeHome(t.home);
    }
  });
  it("a killed agent's allocations are freed at its kill, not when its process closes, and not again then", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    const { held, hold, release } = sigkillHolder();
    try {
      // The agent takes its spawner's whole allowance and keeps the allocation's id to itself.
      const { c, a, agent, report, usage } = await allocatingAgent(t, "g1");
      assert.deepEqual((JSON.parse(report) as { results: unknown[] }).results, ["ok"]);
      assert.deepEqual(await usage(), { gpu: 2 });
      // Its process slow to die: the SIGKILLs are held until the test lets them through.
      hold();
      assert.equal(await c.agents.kill(agent), true);
      assert.ok(held.length > 0, "the agent's process has not been killed yet");
      assert.equal((await c.agents.status(agent)).state, "running", "its process has not closed");
      // Freed at the kill, on the record: its spawner's tree has its allowance back at once.
      assert.deepEqual(await usage(), {});
      await c.call("resource.alloc", "persona://ann", { resource: "gpu", amount: 1 });
      const freed = t.k.inspect
        .queryAudit({ op: "resource.freed", limit: 10 })
        .filter((r) => r.target === `persona://${a.persona}`);
      assert.equal(freed.length, 1);
      assert.equal((JSON.parse(freed[0]?.detail ?? "{}") as { allocationsFreed?: number }).allocationsFreed, 1);
      // Its process closes: nothing is freed (nor uncharged) again.
      release();
      await until(async () => (await c.agents.status(agent)).state !== "running", 30_000, "the agent ended");
      const removed = await until(
        () => t.k.inspect.queryAudit({ op: "persona.removed", limit: 100 }).find((r) => r.target === `persona://${a.persona}`),
        30_000,
        "its key's removal",
      );
      assert.equal((JSON.parse(removed.detail ?? "{}") as { allocationsFreed?: number }).allocationsFreed, undefined);
      assert.deepEqual(await usage(), { gpu: 1 }, "ann's own allocation, uncharged by nothing else");
    } finally {
      release();
      await t.stop();
      removeHome(t.home);
    }
  });
  it("a killed agent's allocations freed while the record of it is refused is logged, the kernel serving on", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const { ann, c, agent, usage } = await allocatingAgent(t, "g2");
      assert.deepEqual(await usage(), { gpu: 2 });
      // The record of the freeing refused (freeAllocations runs in a microtask: a throw there was
      // an uncaught exception, which ends the kernel's process).
      const opts = (t.k as unknown as { services: { agents: { opts: { record: (act: { op: string }) => number } } } }).services
        .agents.opts;
      const record = opts.record;
      let refused = 0;
      const uncaught: unknown[] = [];
      const monitor = (e: unknown) => uncaught.push(e);
      process.on("uncaughtExceptionMonitor", monitor);
      opts.record = (act, ...rest) => {
        if (act.op === "resource.freed") {
          refused++;
          throw new Error("disk I/O error");
        }
        return (record as (...x: unknown[]) => number)(act, ...rest);
      };
      assert.equal(await c.agents.kill(agent), true);
      await until(() => refused > 0 || undefined, 30_000, "the freeing's record, refused");
      // Freed all the same, and the kernel serves on: old sessions and new.
      assert.deepEqual(await usage(), {});
      await c.call("resource.alloc", "persona://ann", { resource: "gpu", amount: 1 });
      const again = await t.connect(ann.identity, [ann.token]);
      assert.deepEqual(((await again.call("resource.query", "persona://ann")).payload as { usage: object }).usage, { gpu: 1 });
      await until(async () => (await c.agents.status(agent)).state !== "running", 30_000, "the agent ended");
      process.off("uncaughtExceptionMonitor", monitor);
      assert.deepEqual(uncaught, [], "no uncaught exception on the kernel's thread");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
