import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { KernelClient } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { generateIdentity, parseIdentity } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import { DISPATCH } from "./run.js";

// --derived finds the kernel's own records of a derived token (an agent's spawn and end) by the
// token ids in their detail: a persona's long names in that detail must not hide them.
const cli = new CommandWorker(DISPATCH);
const home = mkdtempSync(join(tmpdir(), "kpip-derived-long-"));
const truth = { leaked: "", agent: "" };
// A sub-persona of the grammar's longest segment (64) and the longest agent name its persona id
// allows (`agent.` + 58): the agent's id, the first string of agent.spawned's detail, is then
// longer than 128 characters.
const sub = `eve/${"s".repeat(64)}`;
const name = "n".repeat(58);

before(async () => {
  const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
  await k.start();
  const clients: KernelClient[] = [];
  try {
    const connect = async (identity: ReturnType<typeof generateIdentity>, token: string | Uint8Array) => {
      const c = await KernelClient.connect({ socket: k.socketPath, identity, tokens: [token], reconnect: false });
      clients.push(c);
      return c;
    };
    const admin = await connect(parseIdentity(readFileSync(k.adminIdentity, "utf8")), readFileSync(k.adminToken, "utf8").trim());
    const eve = generateIdentity("eve");
    await admin.personas.register("eve", eve.publicKey);
    const et = await admin.tokens.mint("eve", {
      rights: [{ ops: ["agent.*", "token.*", "persona.*"], targets: ["agent://**", "token://**", "persona://**"] }],
      ttlMs: 3_600_000,
    });
    truth.leaked = et.id;
    const asEve = await connect(eve, et.token);
    const subId = generateIdentity(sub);
    await asEve.personas.register(sub, subId.publicKey);
    const st = await asEve.tokens.mint(sub, {
      rights: [{ ops: ["agent.*"], targets: ["agent://**"] }],
      ttlMs: 600_000,
    });
    const asSub = await connect(subId, st.token);
    const spawned = await asSub.agents.spawn("sleep", name, {
      args: ["600"],
      rights: [{ ops: ["agent.list"], targets: ["agent://**"] }],
      lifetimeMs: 300_000,
    });
    truth.agent = spawned.token;
    await asSub.agents.kill(spawned.agent);
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await k.stop();
  }
});

after(() => {
  cli.close();
  rmSync(home, { recursive: true, force: true });
});

interface Row {
  op: string;
  target: string;
}

const timeline = async (...args: string[]) => {
  const r = await cli.run(["audit", "timeline", "--json", "--limit", "1000", "--home", home, ...args]);
  assert.equal(r.code, 0, `${r.out}${r.err}`);
  return r.out
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Row);
};

describe("audit timeline --derived and long names", () => {
  it("shows an agent's spawn and end when its spawner's id and its name are the longest the grammar allows", async () => {
    const agentRows = (rows: Row[]) =>
      rows
        .filter((r) => r.op === "agent.spawned" || r.op === "agent.exited")
        .map((r) => r.op)
        .sort();
    // Its own token finds them (by the whole id in their detail)...
    assert.deepEqual(agentRows(await timeline("--token", truth.agent)), ["agent.exited", "agent.spawned"]);
    // ...and so must the token it came from, with --derived.
    assert.deepEqual(agentRows(await timeline("--token", truth.leaked, "--derived")), ["agent.exited", "agent.spawned"]);
  });
});
