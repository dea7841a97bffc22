import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KEvent } from "@kpip/protocol";
import { kernelForSuite, klass, until } from "./harness.js";

/** Reads a subscription until an event on `fence` arrives; returns the topics seen before it. */
async function topicsUntil(sub: AsyncIterable<KEvent>, fence: string): Promise<string[]> {
  const seen: string[] = [];
  for await (const e of sub) {
    if (e.topic === fence) return seen;
    seen.push(e.topic);
  }
  return seen;
}

describe("authorization scope: patterns, kernel topics, status, argument names", () => {
  const s = kernelForSuite();

  it("a one-segment '*' in a grant does not authorize a '**' subscription", async () => {
    const one = await s.t.persona("p-shared", [{ ops: ["event.subscribe"], targets: ["topic://shared/*"] }]);
    const c = await s.t.connect(one.identity, [one.token]);
    await assert.rejects(c.events.subscribe("topic://shared/**"), klass("PERMISSION"));
    await assert.rejects(c.events.subscribe("topic://shared/a/*"), klass("PERMISSION"));
    const ok = await c.events.subscribe("topic://shared/*");
    await ok.unsubscribe();
    const top = await s.t.persona("p-top", [{ ops: ["event.subscribe"], targets: ["topic://*"] }]);
    const d = await s.t.connect(top.identity, [top.token]);
    await assert.rejects(d.events.subscribe("topic://**"), klass("PERMISSION"));
    await assert.rejects(d.events.subscribe("topic://kernel/**"), klass("PERMISSION"));
  });

  it("kernel events about a persona's ops reach only that persona and the operator, whatever pattern others hold", async () => {
    const rights = [{ ops: ["event.subscribe", "compute.submit", "op.*"], targets: ["topic://**", "op://**"] }];
    const alice = await s.t.persona("alice", rights);
    const bob = await s.t.persona("bob", rights);
    const a = await s.t.connect(alice.identity, [alice.token]);
    const b = await s.t.connect(bob.identity, [bob.token]);
    const aliceSub = await a.events.subscribe("topic://**");
    const bobSub = await b.events.subscribe("topic://kernel/personas/bob/ops/*");
    const adminSub = await s.admin.events.subscribe("topic://kernel/**");
    const op = await b.compute.command("true");
    const topic = `topic://kernel/personas/bob/ops/${op.id}`;
    for await (const e of bobSub) if (e.topic === topic) break;
    for await (const e of adminSub) if (e.topic === topic) break;
    await s.admin.events.emit("topic://fence", null);
    const seen = await topicsUntil(aliceSub, "topic://fence");
    assert.deepEqual(
      seen.filter((x) => x.startsWith("topic://kernel/")),
      [],
      "alice saw another persona's kernel events",
    );
  });

  it("system.status shows a persona only itself: no home, no other persona's sessions", async () => {
    const carol = await s.t.persona("carol", [{ ops: ["system.*"], targets: ["kernel://"] }]);
    const dave = await s.t.persona("dave", [{ ops: ["system.*"], targets: ["kernel://"] }]);
    const c = await s.t.connect(carol.identity, [carol.token]);
    await s.t.connect(dave.identity, [dave.token]);
    const mine = (await c.call("system.status", "kernel://")).payload as Record<string, unknown>;
    const text = JSON.stringify(mine);
    assert.equal(mine.view, "persona");
    assert.ok(!text.includes(s.t.home), "the home path is the operator's");
    assert.ok(!text.includes("dave") && !text.includes('"admin"'), text);
    const sessions = mine.sessions as { persona: string }[];
    assert.ok(sessions.length >= 1 && sessions.every((x) => x.persona === "carol"), text);
    const op = (await s.admin.call("system.status", "kernel://")).payload as Record<string, unknown>;
    assert.equal(op.view, "operator");
    assert.equal(op.home, s.t.home);
    assert.ok((op.sessions as { persona: string }[]).some((x) => x.persona === "dave"));
  });

  it("system.info counts a persona's own sessions only: another persona's connecting does not show", async () => {
    const erin = await s.t.persona("erin", [{ ops: ["system.info"], targets: ["kernel://"] }]);
    const frank = await s.t.persona("frank", [{ ops: ["system.info"], targets: ["kernel://"] }]);
    const e = await s.t.connect(erin.identity, [erin.token]);
    const count = async () => ((await e.call("system.info", "kernel://")).payload as { sessions: number }).sessions;
    const before = await count();
    // frank's sessions come and go: erin, with no right over frank, must not be able to watch them.
    const opened = await Promise.all([1, 2, 3].map(() => s.t.connect(frank.identity, [frank.token])));
    assert.equal(await count(), before, "frank's sessions showed in erin's system.info");
    assert.equal(before, 1, "erin sees her own session");
    for (const c of opened) await c.close();
    // The operator still counts every session.
    const all = ((await s.admin.call("system.info", "kernel://")).payload as { sessions: number }).sessions;
    assert.ok(all >= 2, `the admin counts ${all}`);
  });

  it("system.info below a tree's top counts the persona's subtree from counts kept at admission and close, visiting no session", async () => {
    const rights = [{ ops: ["system.info"], targets: ["kernel://"] }];
    const top = await s.t.persona("gus", rights);
    const w = await s.t.persona("gus/w", rights);
    const wx = await s.t.persona("gus/w/x", rights);
    const v = await s.t.persona("gus/v", rights);
    const mine = await s.t.connect(w.identity, [w.token]);
    const below = await s.t.connect(wx.identity, [wx.token]);
    await s.t.connect(wx.identity, [wx.token]);
    // Beside it and above it: not counted for gus/w.
    await s.t.connect(v.identity, [v.token]);
    await s.t.connect(top.identity, [top.token]);
    // Any walk over the kernel's sessions made to answer the count is seen here.
    const registry = (s.t.k as unknown as { services: { sessions: { sessions: Set<unknown> } } }).services.sessions;
    const set = registry.sessions;
    let walks = 0;
    const iterate = Set.prototype[Symbol.iterator];
    Object.defineProperty(set, Symbol.iterator, {
      configurable: true,
      value(this: Set<unknown>) {
        if (/sessionCountWithin/.test(new Error().stack ?? "")) walks++;
        return iterate.call(this);
      },
    });
    try {
      const count = async () => ((await mine.call("system.info", "kernel://")).payload as { sessions: number }).sessions;
      assert.equal(await count(), 3, "gus/w and the two sessions of gus/w/x");
      await below.close();
      await until(async () => (await count()) === 2, 30_000, "the closed session no longer counted");
      const topCount = await s.t.connect(top.identity, [top.token]);
      const all = ((await topCount.call("system.info", "kernel://")).payload as { sessions: number }).sessions;
      assert.equal(all, 5, "gus counts its whole tree: itself twice, gus/w, gus/w/x, gus/v");
      assert.equal(walks, 0, "no session was visited to count");
    } finally {
      delete (set as unknown as Record<symbol, unknown>)[Symbol.iterator];
    }
  });

  it("names from Object.prototype are no argument of any op", async () => {
    for (const name of ["constructor", "toString", "hasOwnProperty", "valueOf", "__defineGetter__"]) {
      await assert.rejects(s.admin.call("system.health", "kernel://", { [name]: 1 }), klass("SEMANTIC"), name);
    }
    assert.equal((await s.admin.system.health()).status, "ok");
  });
});
