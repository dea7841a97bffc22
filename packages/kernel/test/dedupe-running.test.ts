import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Intent } from "@kpip/protocol";
import { until } from "@kpip/protocol/testing";
import type { Kernel } from "../src/index.js";
import { removeHome, startKernel, type TestKernel } from "./harness.js";
import { allAudit, RawPeer } from "./wire.js";

// PROTOCOL §11: a duplicate of a request still running waits for its answer; it never runs the
// effect again. The memory record of a running request is its only record (the durable one is
// written with its effect): it must outlive the cache's bound, whoever fills the cache.

/** Runs of the held op: `held` waits for `release`; once released, later runs answer at once. */
interface Holds {
  runs: number;
  held: (() => void)[];
  released: boolean;
}

function release(h: Holds): void {
  h.released = true;
  for (const ok of h.held.splice(0)) ok();
}

/** An op with effects whose handler runs until the test lets it answer: each run is counted. */
function holdFamily(h: Holds) {
  return (k: Kernel) =>
    k.register({
      name: "hold",
      ops: [
        {
          op: "hold.effect",
          description: "An effect that answers when the test lets it.",
          targets: ["kernel"],
          args: {},
          idempotent: false,
          effects: true,
          handler: () => {
            h.runs++;
            if (h.released) return { status: "SUCCESS", payload: {} };
            return new Promise((ok) => h.held.push(() => ok({ status: "SUCCESS", payload: {} })));
          },
        },
      ],
    });
}

const HOLD: Intent = { op: "hold.effect", target: "kernel://", args: {} };
const HEALTH: Intent = { op: "system.health", target: "kernel://", args: {} };
const RIGHTS = [{ ops: ["hold.effect", "system.health"], targets: ["kernel://"] }];

async function peer(t: TestKernel, id: string): Promise<RawPeer> {
  const p = await t.persona(id, RIGHTS);
  const raw = await RawPeer.connect(t.k.socketPath);
  await raw.handshake(p.identity, [p.token]);
  return raw;
}

describe("dedupe: a running request is never forgotten (a real kernel, a small dedupeMaxEntries)", () => {
  it("another persona fills the dedupe cache while alice's effect runs: alice's retry waits for it, the effect runs once", async () => {
    const h: Holds = { runs: 0, held: [], released: false };
    const t = await startKernel({ dedupeMaxEntries: 20 }, undefined, holdFamily(h));
    try {
      const alice = await peer(t, "alice");
      const mallory = await peer(t, "mallory");
      alice.request(1, HOLD, { persona: "alice" });
      await until(() => h.runs === 1, 30_000, "alice's effect running");
      // Three times the cache's bound of answered requests, newer than alice's running one.
      // (Four at a time: a tree may have a quarter of the bound running, here 5.)
      for (let id = 1; id <= 60; id += 4) {
        for (let i = id; i < id + 4; i++) mallory.request(i, HEALTH, { persona: "mallory" });
        for (let i = id; i < id + 4; i++) assert.equal((await mallory.response(i)).status, "SUCCESS");
      }
      // Alice's response was lost (say): she retries with the same ids and bytes.
      alice.request(1, HOLD, { persona: "alice" });
      await alice.barrier(2);
      release(h);
      const answers = [await alice.response(1), await alice.response(1)];
      assert.deepEqual(
        answers.map((a) => a.status),
        ["SUCCESS", "SUCCESS"],
      );
      assert.equal(h.runs, 1, "the effect ran once");
      const phases = allAudit(t.k)
        .filter((r) => r.persona === "alice" && r.requestId === 1)
        .map((r) => r.phase);
      assert.deepEqual(phases, ["intent", "outcome", "replay"], "one run, the retry answered from it");
      alice.close();
      mallory.close();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a persona tree holding its share of running requests is refused RESOURCE (retryable) for more, never evicting: others' requests still run", async () => {
    const h: Holds = { runs: 0, held: [], released: false };
    // 20 entries: a tree may have 5 running.
    const t = await startKernel({ dedupeMaxEntries: 20 }, undefined, holdFamily(h));
    try {
      const alice = await peer(t, "alice");
      const mallory = await peer(t, "mallory");
      for (let id = 1; id <= 5; id++) mallory.request(id, HOLD, { persona: "mallory" });
      await until(() => h.runs === 5, 30_000, "mallory's five running");
      mallory.request(6, HOLD, { persona: "mallory" });
      const refused = await mallory.response(6);
      assert.equal(refused.status, "FAILURE");
      assert.equal(refused.error, "RESOURCE");
      assert.match(refused.message ?? "", /persona tree mallory has 5 requests running/);
      assert.equal(h.runs, 5, "the refused request did not run");
      // Alice's tree has its own share.
      alice.request(1, HOLD, { persona: "alice" });
      await until(() => h.runs === 6, 30_000, "alice's running");
      // Mallory's five are still remembered: a retry of one waits for it.
      mallory.request(3, HOLD, { persona: "mallory" });
      await mallory.barrier(7);
      release(h);
      for (let id = 1; id <= 5; id++) assert.equal((await mallory.response(id)).status, "SUCCESS");
      assert.equal((await mallory.response(3)).status, "SUCCESS");
      assert.equal((await alice.response(1)).status, "SUCCESS");
      assert.equal(h.runs, 6, "the retry of a running request ran nothing");
      // The refusal was not remembered: its retry, with room now, runs.
      mallory.request(6, HOLD, { persona: "mallory" });
      assert.equal((await mallory.response(6)).status, "SUCCESS");
      assert.equal(h.runs, 7);
      alice.close();
      mallory.close();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
