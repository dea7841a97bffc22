import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CommandWorker } from "@kpip/protocol/testing";
import { evidenceKernel } from "./evidence.js";
import { DISPATCH } from "./run.js";

// An event's effect is its delivery: did what a hostile persona emitted reach anyone?
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

describe("an emitted event in the evidence", () => {
  it("event.emit's outcome names how many subscriptions the event reached, as its answer did", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-event-evidence-"));
    try {
      await evidenceKernel(home, async ({ admin, as }) => {
        const { client: asEve } = await as("eve", [{ ops: ["event.emit"], targets: ["topic://shared/**"] }]);
        // The admin listens on one topic, twice; nobody on the other.
        await admin.events.subscribe("topic://shared/alerts");
        await admin.events.subscribe("topic://shared/**");
        assert.equal((await asEve.events.emit("topic://shared/alerts", { injected: true })).subscribers, 2);
        assert.equal((await asEve.events.emit("topic://shared/quiet", 1)).subscribers, 1);
      });
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

  it("event.emit's outcome names the personas and sessions it reached, though a subscription ended unrecorded when its grant expired", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-event-evidence-"));
    let ahead = 0;
    const sessions: Record<string, string> = {};
    try {
      // The kernel's clock, moved forward to expire a grant (never a wait).
      await evidenceKernel(
        home,
        async ({ as: asPersona }) => {
          const as = async (name: string, allow: string, ttlMs: number) =>
            (await asPersona(name, [{ ops: [allow], targets: ["topic://shared/**"] }], { ttlMs })).client;
          const eve = await as("eve", "event.emit", 3_600_000);
          const bob = await as("bob", "event.subscribe", 3_600_000);
          const carol = await as("carol", "event.subscribe", 60_000);
          const dave = await as("dave", "event.subscribe", 3_600_000);
          // bob listens twice on one session (one recipient), carol on a grant that expires, dave elsewhere.
          await bob.events.subscribe("topic://shared/**");
          await bob.events.subscribe("topic://shared/out");
          await carol.events.subscribe("topic://shared/out");
          await dave.events.subscribe("topic://shared/other");
          assert.equal((await eve.events.emit("topic://shared/out", { leak: 1 })).subscribers, 3);
          // carol's grant expires: her subscription ends at the next event, with no record of its own.
          ahead = 120_000;
          assert.equal((await eve.events.emit("topic://shared/out", { leak: 2 })).subscribers, 2);
        },
        { clock: () => Date.now() + ahead },
      );
      const opens = await cli.run(["audit", "timeline", "--json", "--op", "session.open", "--home", home]);
      for (const l of opens.out.trim().split("\n")) {
        const o = JSON.parse(l) as { persona: string; session: string };
        sessions[o.persona] = o.session;
      }
      const r = await cli.run(["audit", "timeline", "--json", "--op", "event.emit", "--persona", "eve", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const rows = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { detail: { subscribers: number; to?: { persona: string; session: string }[] } });
      const to = (i: number) => (rows[i]?.detail.to ?? []).map((x) => `${x.persona} ${x.session}`).sort();
      assert.deepEqual(to(0), [`bob ${sessions.bob}`, `carol ${sessions.carol}`]);
      assert.deepEqual(to(1), [`bob ${sessions.bob}`]);
      // The subscribe's record names its subscription, as the unsubscribe that ends one does.
      const subs = await cli.run(["audit", "timeline", "--json", "--op", "event.subscribe", "--persona", "bob", "--home", home]);
      const ids = subs.out
        .trim()
        .split("\n")
        .map((l) => (JSON.parse(l) as { detail: { subscription?: unknown } }).detail.subscription);
      assert.equal(ids.length, 2);
      assert.ok(ids.every((x) => x !== undefined) && ids[0] !== ids[1], JSON.stringify(ids));
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
