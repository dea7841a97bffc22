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

// "What did this leaked token enable": the requests of a token and of every token made from it.
const cli = new CommandWorker(DISPATCH);
const home = mkdtempSync(join(tmpdir(), "kpip-derived-timeline-"));
const truth = { leaked: "", narrowed: "", agent: "", other: "" };

/** eve's token (the leaked one) mints a narrowed token, which writes; eve spawns an agent; the admin writes elsewhere. */
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
    const adminToken = readFileSync(k.adminToken, "utf8").trim();
    const admin = await connect(parseIdentity(readFileSync(k.adminIdentity, "utf8")), adminToken);
    const eve = generateIdentity("eve");
    await admin.personas.register("eve", eve.publicKey);
    const et = await admin.tokens.mint("eve", {
      rights: [
        { ops: ["storage.*", "agent.*", "token.*"], targets: ["obj://eve/**", "agent://**", "token://**", "persona://**"] },
      ],
      ttlMs: 3_600_000,
    });
    truth.leaked = et.id;
    const asEve = await connect(eve, et.token);
    const narrowed = await asEve.tokens.mint("eve", {
      rights: [{ ops: ["storage.write"], targets: ["obj://eve/n/**"] }],
      ttlMs: 600_000,
    });
    truth.narrowed = narrowed.id;
    const asNarrowed = await connect(eve, narrowed.token);
    await asNarrowed.storage.write("obj://eve/n/planted", new TextEncoder().encode("payload"));
    const spawned = await asEve.agents.spawn("sleep", "w1", {
      args: ["600"],
      rights: [{ ops: ["storage.read"], targets: ["obj://eve/**"] }],
      lifetimeMs: 600_000,
    });
    truth.agent = spawned.token;
    await admin.storage.write("obj://admin/unrelated", new TextEncoder().encode("x"));
    await asEve.agents.kill(spawned.agent);
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
  tokens: string[];
}

const timeline = async (...args: string[]) => {
  const r = await cli.run(["audit", "timeline", "--json", "--limit", "1000", "--home", home, ...args]);
  return {
    ...r,
    // With --json a refusal is a JSON object on stdout.
    said: `${r.out}${r.err}`,
    rows:
      r.code === 0
        ? r.out
            .trim()
            .split("\n")
            .filter(Boolean)
            .map((l) => JSON.parse(l) as Row)
        : [],
  };
};

describe("audit timeline --token T --derived", () => {
  it("shows the requests of a token and of every token minted or spawned from it, and none of another's", async () => {
    const plain = await timeline("--token", truth.leaked);
    assert.equal(plain.code, 0, plain.err);
    const tree = await timeline("--token", truth.leaked, "--derived");
    assert.equal(tree.code, 0, tree.err);
    const write = (rows: Row[]) => rows.find((r) => r.op === "storage.write" && r.target === "obj://eve/n/planted");
    // The narrowed token's write: not the leaked token's own request, so only with --derived.
    assert.equal(write(plain.rows), undefined);
    assert.ok(write(tree.rows), "the write the narrowed token made");
    assert.deepEqual(write(tree.rows)?.tokens, [truth.narrowed]);
    // The agent's spawn and its end are in it; the admin's own write is not.
    assert.ok(tree.rows.some((r) => r.op === "agent.spawned"));
    assert.ok(tree.rows.some((r) => r.op === "agent.exited"));
    assert.equal(
      tree.rows.find((r) => r.target === "obj://admin/unrelated"),
      undefined,
    );
    // Every row of the plain timeline is in the tree's too.
    assert.ok(plain.rows.length > 0 && tree.rows.length > plain.rows.length);
    assert.match(tree.err, /and 2 tokens derived from it/);
    // A prefix of the id is enough.
    const short = await timeline("--token", truth.leaked.slice(0, 10), "--derived");
    assert.equal(short.code, 0, short.err);
    assert.equal(short.rows.length, tree.rows.length);
  });

  it("refuses --derived without --token, and a token the record does not know", async () => {
    const alone = await timeline("--derived");
    assert.equal(alone.code, 2);
    assert.match(alone.said, /--derived goes with --token/);
    const unknown = await timeline("--token", "ffffffffffffffffffffffffffffffff", "--derived");
    assert.equal(unknown.code, 2);
    assert.match(unknown.said, /no such token on the record/);
    const empty = await timeline("--token", "", "--derived");
    assert.equal(empty.code, 2);
    const value = await cli.run(["audit", "tokens", "--derived", "--home", home]);
    assert.equal(value.code, 2, "--derived applies to the timeline only");
  });
});
