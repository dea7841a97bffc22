import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { KernelClient } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { generateIdentity } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import { connectAdmin, DISPATCH } from "./run.js";

// An event's effect is its delivery: did what a hostile persona emitted reach anyone?
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

describe("an emitted event in the evidence", () => {
  it("event.emit's outcome names how many subscriptions the event reached, as its answer did", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-event-evidence-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      const clients: KernelClient[] = [];
      try {
        const admin = await connectAdmin(home);
        clients.push(admin);
        const eve = generateIdentity("eve");
        await admin.personas.register("eve", eve.publicKey);
        const et = await admin.tokens.mint("eve", {
          rights: [{ ops: ["event.emit"], targets: ["topic://shared/**"] }],
          ttlMs: 600_000,
        });
        const asEve = await KernelClient.connect({ socket: k.socketPath, identity: eve, tokens: [et.token], reconnect: false });
        clients.push(asEve);
        // The admin listens on one topic, twice; nobody on the other.
        await admin.events.subscribe("topic://shared/alerts");
        await admin.events.subscribe("topic://shared/**");
        assert.equal((await asEve.events.emit("topic://shared/alerts", { injected: true })).subscribers, 2);
        assert.equal((await asEve.events.emit("topic://shared/quiet", 1)).subscribers, 1);
      } finally {
        for (const c of clients) await c.close().catch(() => {});
        await k.stop();
      }
      const r = await cli.run(["audit", "timeline", "--json", "--op", "event.emit", "--persona", "eve", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const rows = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { target: string; detail: { subscribers?: number } | null });
      assert.deepEqual(
        rows.map((x) => [x.target, x.detail?.subscribers]),
        [
          ["topic://shared/alerts", 2],
          ["topic://shared/quiet", 1],
        ],
      );
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
