// An agent's registrations end with it, as a removed persona's do (case 701): the keys it
// generated for them are in whoever's hands it gave them to.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type Identity, parseIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import {
  connectAdminOf,
  removeHome,
  SANDBOX_READ_PATHS,
  sandboxSkip,
  spawnReady,
  startKernel,
  type TestKernel,
  until,
} from "./harness.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/** The registered persona ids of a home, read without a kernel. */
function personas(home: string): string[] {
  const db = new Database(join(home, "kernel.db"), { readonly: true });
  try {
    return db.prepare("SELECT id FROM personas ORDER BY id").pluck(true).all() as string[];
  } finally {
    db.close();
  }
}

const REGISTERING_AGENT = fileURLToPath(new URL("../../test/fixtures/registering-agent.mjs", import.meta.url));

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

/** Whether `id` opens a session under `token` (closed at once: none is left open to count). */
async function attests(t: TestKernel, id: Identity, token: Uint8Array): Promise<string> {
  try {
    const s = await t.connect(id, [token], { reconnect: false });
    await s.close();
    return "ok";
  } catch (e) {
    return (e as { errorClass?: string }).errorClass ?? String(e);
  }
}

/** ann, and her agent `name` given only persona.register on her tree: it registers ann/kept and prints the key. */
async function registeringAgent(t: TestKernel, name: string, exit: boolean) {
  const ann = await t.persona("ann", [
    { ops: ["persona.register", "persona.list"], targets: ["persona://ann/**", "persona://ann"] },
    { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
    { ops: ["storage.*"], targets: ["obj://ws/**"] },
  ]);
  const c = await t.connect(ann.identity, [ann.token]);
  const a = await c.agents.spawn("node", name, {
    args: [REGISTERING_AGENT, "ann/kept", ...(exit ? ["exit"] : [])],
    rights: [{ ops: ["persona.register"], targets: ["persona://ann/**"] }],
    lifetimeMs: 120_000,
  });
  const agent = a.agent as string;
  const report = await until(
    async () => {
      const out = Buffer.from((await c.agents.logs(agent)).stdout).toString();
      return out.includes("\n") ? (JSON.parse(out) as { identity?: string; error?: string }) : undefined;
    },
    60_000,
    "the agent's report",
  );
  assert.ok(report.identity, `the agent registered ann/kept: ${report.error}`);
  return { ann, c, agent, kept: parseIdentity(report.identity) };
}

describe("an agent's registrations end with it", () => {
  it("an agent that registered a persona is killed: the key it handed out no longer attests, and ann's token no longer works for it", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const { ann, c, agent, kept } = await registeringAgent(t, "r1", false);
      // Whoever got the key opened a session as ann/kept under ann's token while the agent ran.
      const early = await t.connect(kept, [ann.token], { reconnect: false });
      await early.storage.write("obj://ws/early", "1");
      assert.equal(await c.agents.kill(agent), true);
      // At the kill, not once its process has closed.
      assert.notEqual(await outcome(early.storage.write("obj://ws/early", "2")), "ok");
      assert.notEqual(await attests(t, kept, ann.token), "ok");
      await until(async () => (await c.agents.status(agent)).state !== "running", 60_000, "the agent's end");
      assert.notEqual(await attests(t, kept, ann.token), "ok");
      // The kill's revocation names what it removed, and so does its key's removal at its end.
      const revoked = t.k.inspect
        .queryAudit({ op: "token.revoked", limit: 100 })
        .map((r) => JSON.parse(r.detail ?? "{}") as { registrationsRemoved?: string[] })
        .filter((d) => d.registrationsRemoved);
      assert.deepEqual(
        revoked.map((d) => d.registrationsRemoved),
        [["ann/kept"]],
      );
      const removed = t.k.inspect
        .queryAudit({ op: "persona.removed", limit: 100 })
        .map((r) => JSON.parse(r.detail ?? "{}") as { alsoRemoved?: string[] })
        .filter((d) => d.alsoRemoved);
      assert.deepEqual(
        removed.map((d) => d.alsoRemoved),
        [["ann/kept"]],
      );
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("an agent that registered a persona and exits on its own: its registration goes with its key", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const { ann, c, agent, kept } = await registeringAgent(t, "r2", true);
      await until(async () => (await c.agents.status(agent)).state !== "running", 60_000, "the agent's end");
      // Its end (its row, its key) is made in one turn: once its state says so, all of it is done.
      assert.notEqual(await attests(t, kept, ann.token), "ok");
      const list = await c.call("persona.list", "persona://ann");
      assert.ok(!JSON.stringify(list.payload).includes("ann/kept"), "ann/kept is no longer registered");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("an agent lost with its kernel (killed before the agent ended): the next start removes what it registered with its key", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    const code = `const { Kernel } = await import(process.argv[1]);
await new Kernel({ home: process.argv[2], logLevel: "silent", sandboxReadPaths: process.argv[3] }).start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
    try {
      await (await startKernel({}, home)).stop();
      const [admin] = personas(home);
      assert.ok(admin);
      const kept = `${admin}/kept`;
      const child = await spawnReady(["--input-type=module", "-e", code, kernelModule, home, SANDBOX_READ_PATHS], "ready");
      const exited = new Promise((r) => child.once("exit", r));
      try {
        const c = await connectAdminOf(home);
        try {
          const a = await c.agents.spawn("node", "r3", {
            args: [REGISTERING_AGENT, kept],
            rights: [{ ops: ["persona.register"], targets: [`persona://${admin}/**`] }],
            lifetimeMs: 120_000,
          });
          const out = await until(
            async () => {
              const o = Buffer.from((await c.agents.logs(a.agent as string)).stdout).toString();
              return o.includes("\n") ? o : undefined;
            },
            60_000,
            "the agent's report",
          );
          assert.ok(out.includes("identity"), out);
        } finally {
          await c.close().catch(() => {});
        }
        assert.ok(personas(home).includes(kept));
        child.kill("SIGKILL");
        await exited;
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      await (await startKernel({}, home)).stop();
      assert.deepEqual(personas(home), [admin], "the lost agent's registration went with its key");
    } finally {
      removeHome(home);
    }
  });
});
