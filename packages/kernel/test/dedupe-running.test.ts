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

/** `fn` on a kernel with the held op and `dedupeMaxEntries`: stopped, and its home removed, after, pass or fail. */
async function withHolds(dedupeMaxEntries: number, fn: (t: TestKernel, h: Holds) => Promise<void>): Promise<void> {
  const h: Holds = { runs: 0, held: [], released: false };
  const t = await startKernel({ dedupeMaxEntries }, undefined, holdFamily(h));
  try {
    await fn(t, h);
  } finally {
    await t.stop();
    removeHome(t.home);
  }
}

const HOLD: Intent = { op: "hold.effect", target: "kernel://", args: {} };
const HEALTH: Intent = { op: "system.health", target: "kernel://", args: {} };
const RIGHTS = [{ ops: ["hold.effect", "system.health"], targets: ["kernel://"] }];

async function peer(t: TestKernel, id: string): Promise<RawPeer> {
  const p = await t.persona(id, RIGHTS);
  const raw = await RawPeer.connect(t.k.socketPath);
  await raw.handshake(p.identity, [p.token]);
  // Its requests held while the test waits for others': quiet meanwhile, it must not be dropped as dead.
  raw.answerPings();
  return raw;
}

describe("dedupe: a running request is never forgotten (a real kernel, a small dedupeMaxEntries)", () => {
  it("another persona fills the dedupe cache while alice's effect runs: alice's retry waits for it, the effect runs once", async () => {
    await withHolds(20, async (t, h) => {
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
    });
  });

  it("a persona tree holding its share of running requests is refused RESOURCE (retryable) for more, never evicting: others' requests still run", async () => {
    // 20 entries: a tree may have 5 running.
    await withHolds(20, async (t, h) => {
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
    });
  });

  it("four trees at their share of running requests (the admin's own among them) leave the admin persona its reserve: its request runs", async () => {
    // 16 entries: a tree may have 4 running, and the last one (a sixteenth) is the admin persona's.
    await withHolds(16, async (t, h) => {
      // An agent or sub-persona of the admin's tree counts in the admin's tree, as p1's does in p1's.
      const trees = [await peer(t, "admin/ops"), await peer(t, "p1"), await peer(t, "p2"), await peer(t, "p3")];
      const ids = ["admin/ops", "p1", "p2", "p3"];
      for (const [i, raw] of trees.slice(0, 3).entries())
        for (let id = 1; id <= 4; id++) raw.request(id, HOLD, { persona: ids[i] as string });
      const p3 = trees[3] as RawPeer;
      for (let id = 1; id <= 3; id++) p3.request(id, HOLD, { persona: "p3" });
      await until(() => h.runs === 15, 30_000, "fifteen running");
      // The sixteenth is kept for the admin persona: p3, within its share, is refused.
      p3.request(4, HOLD, { persona: "p3" });
      const refused = await p3.response(4);
      assert.equal(refused.error, "RESOURCE");
      assert.match(refused.message ?? "", /the last 1 of the dedupe memory's 16 \(dedupeMaxEntries\) are reserved for the admin/);
      // The admin persona runs one, though its tree has its share running (the admin is exempt from it).
      const admin = await RawPeer.admin(t);
      admin.answerPings();
      admin.request(1, HOLD, { persona: "admin" });
      await until(() => h.runs === 16, 30_000, "the admin's running");
      // Past the whole bound, the admin is refused like anyone.
      admin.request(2, HOLD, { persona: "admin" });
      const full = await admin.response(2);
      assert.equal(full.error, "RESOURCE");
      assert.match(full.message ?? "", /the kernel has 16 requests running/);
      release(h);
      assert.equal((await admin.response(1)).status, "SUCCESS");
      for (const raw of [...trees, admin]) raw.close();
    });
  });
});
