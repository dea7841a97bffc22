import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { decodeToken, parseIdentity } from "@kpip/protocol";
import type { KernelOptions } from "../src/index.js";
import { klass, removeHome, sandboxSkip, startKernel, type TestKernel, until, withKernel } from "./harness.js";

const HEALTH = [{ ops: ["system.health"], targets: ["kernel://"] }];

/** Spawns `agent://sh/<name>` of `c`'s persona and connects as it (its bootstrap: identity, token, on fd 3). */
async function spawnAs(t: TestKernel, c: KernelClient, name: string): Promise<KernelClient> {
  await c.agents.spawn("sh", name, { args: ["-c", "cat <&3; exec sleep 600"], rights: HEALTH, lifetimeMs: 600_000 });
  const creds = await until(
    async () => {
      const out = Buffer.from((await c.agents.logs(`agent://sh/${name}`)).stdout).toString();
      return out.includes("\n") ? (JSON.parse(out.split("\n")[0] as string) as { identity: string; token: string }) : undefined;
    },
    30_000,
    `${name}'s bootstrap`,
  );
  return t.connect(parseIdentity(creds.identity), [creds.token]);
}

/**
 * token.inspect's status and token.refresh's maximum-lifetime check read the kernel's clock, the
 * one the enforcer judges expiry by — not the host's: under a kernel clock (a test's, a kernel
 * whose clock option is set) the two never disagree.
 */
describe("token status by the kernel clock", () => {
  it("token.inspect's status and token.refresh agree with enforcement under a kernel clock that is not the host's", async () => {
    // Ten minutes behind the host: a token minted now has expired by the host's clock, not the kernel's.
    let offset = -600_000;
    await withKernel({ clock: () => Date.now() + offset }, async (t) => {
      const admin = await t.admin();
      const ws = [{ ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] }];
      const gus = await t.persona("gus", ws, { ttlMs: 60_000 });
      const c = await t.connect(gus.identity, [gus.token]);
      await c.storage.write("obj://ws1/g", "x");
      assert.equal((await admin.tokens.inspect(gus.id, gus.token)).status, "valid", "usable, so valid");

      // Refreshing within the maximum lifetime by the kernel's clock is allowed.
      const m = await admin.tokens.mint("gus", { rights: ws, ttlMs: 10_000, maxLifetimeMs: 60_000 });
      const r = await c.call("token.refresh", `token://${m.id}`, { token: m.token }, { caps: [m.token] });
      const fresh = (r.payload as { token: Uint8Array }).token;
      assert.ok(decodeToken(fresh).claims.exp <= decodeToken(m.token).claims.maxExp);

      // Past its expiry by the kernel's clock: refused, and inspect says so.
      offset += 61_000;
      await assert.rejects(c.storage.write("obj://ws1/g", "x"), klass("CAPABILITY"));
      assert.equal((await admin.tokens.inspect(gus.id, gus.token)).status, "expired");
    });
  });

  it("a token minted for an agent's persona, live by the kernel's clock though past by the host's, ends with the agent", {
    skip: sandboxSkip,
  }, async () => {
    // The kernel's clock ten minutes behind the host's: a token of a minute is live to the kernel only.
    await withKernel({ clock: () => Date.now() - 600_000 }, async (t) => {
      const eve = await t.persona("eve", [
        { ops: ["agent.*"], targets: ["agent://**", "kernel://"] },
        { ops: ["token.mint"], targets: ["persona://eve/**"] },
        ...HEALTH,
      ]);
      const c = await t.connect(eve.identity, [eve.token]);
      await spawnAs(t, c, "w1");
      const minted = await c.tokens.mint("eve/agent.w1", { rights: HEALTH, ttlMs: 60_000 });
      await c.call("agent.kill", "agent://sh/w1", {});
      await until(async () => (await c.agents.status("agent://sh/w1")).state !== "running", 30_000, "w1 ended");
      const later = await spawnAs(t, c, "w1");
      await assert.rejects(
        later.call("system.health", "kernel://", {}, { caps: [minted.token] }),
        klass("CAPABILITY"),
        "the token minted for the earlier agent acts for no later one",
      );
      await c.call("agent.kill", "agent://sh/w1", {});
    });
  });

  it("a task ends with its token by the kernel's clock, not the host's: neither past the token's expiry nor before it", async () => {
    // The kernel's clock ten minutes ahead of the host's: a token of 10 s expires 10 s from now, not
    // ten minutes and 10 s from now.
    await withTasks({ clock: () => Date.now() + 600_000 }, async (t) => {
      const gus = await t.persona("gus", SUBMIT, { ttlMs: 10_000 });
      const c = await t.connect(gus.identity, [gus.token]);
      const d = await c.compute.task("hang");
      const id = d.op.slice("op://".length);
      const ended = await until(
        () => {
          const op = t.k.inspect.getOp(id);
          return op && op.state !== "running" && op.state !== "queued" ? op : undefined;
        },
        60_000,
        "the task's end at its token's expiry",
      );
      assert.equal(ended.errorClass, "CAPABILITY", String(ended.message));
    });
    // Ten minutes behind: a token of a minute is live to the kernel (the enforcer let the submit
    // through), and its task runs, not "expired" at once by the host's clock.
    await withTasks({ clock: () => Date.now() - 600_000 }, async (t) => {
      const gus = await t.persona("gus", SUBMIT, { ttlMs: 60_000 });
      const c = await t.connect(gus.identity, [gus.token]);
      assert.equal(await c.ops.wait(await c.compute.task("square", 7)), 49);
    });
  });
});

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));
const SUBMIT = [
  { ops: ["compute.submit"], targets: ["op://task/**"] },
  { ops: ["op.result", "op.status"], targets: ["op://**"] },
];

/** A kernel with the fixture tasks `hang` and `square` registered. */
async function withTasks(opts: KernelOptions, fn: (t: TestKernel) => Promise<void>): Promise<void> {
  const t = await startKernel(opts, undefined, (k) => {
    k.registerTask("hang", { module: TASKS, export: "hang" });
    k.registerTask("square", { module: TASKS, export: "square" });
  });
  try {
    await fn(t);
  } finally {
    await t.stop();
    removeHome(t.home);
  }
}
