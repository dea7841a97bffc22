import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import type { KEvent } from "@kpip/protocol";
import { kernelForSuite, klass, until, withKernel } from "./harness.js";

type Watch = Awaited<ReturnType<KernelClient["watch"]>>;

/** Collects a watch's events as they arrive; `done` resolves when its iteration ends. */
function collect(w: Watch): { events: KEvent[]; done: Promise<void> } {
  const events: KEvent[] = [];
  const done = (async () => {
    for await (const e of w) events.push(e);
  })();
  return { events, done };
}

const changes = (events: KEvent[]) => events.map((e) => e.data as { uri: string; generation: number; kind: string });

describe("storage.watch: change notices for whoever may read the objects", () => {
  const s = kernelForSuite();

  it("tells a watcher of each write, upload and delete under its pattern, and nothing else", async () => {
    const reader = await s.t.persona("w-reader", [{ ops: ["storage.read"], targets: ["obj://ws1/notes/**"] }]);
    const writer = await s.t.persona("w-writer", [{ ops: ["storage.*"], targets: ["obj://ws1/**", "obj://ws2/**"] }]);
    const r = await s.t.connect(reader.identity, [reader.token]);
    const w = await s.t.connect(writer.identity, [writer.token]);
    const watch = await r.watch("obj://ws1/notes/**");
    const got = collect(watch);
    await w.storage.write("obj://ws1/other", "not under the pattern");
    await w.storage.write("obj://ws2/notes/a", "another workspace");
    const a = await w.storage.write("obj://ws1/notes/a", "one");
    const big = await w.storage.putLarge("obj://ws1/notes/deep/b", new Uint8Array(300_000).fill(1), { chunkBytes: 100_000 });
    const del = await w.storage.delete("obj://ws1/notes/a");
    await until(() => got.events.length >= 3, 30_000, "three change notices");
    assert.deepEqual(changes(got.events), [
      { uri: "obj://ws1/notes/a", generation: a.generation, kind: "write" },
      { uri: "obj://ws1/notes/deep/b", generation: big.generation, kind: "write" },
      { uri: "obj://ws1/notes/a", generation: del.generation, kind: "delete" },
    ]);
    assert.deepEqual(
      got.events.map((e) => e.topic),
      ["obj://ws1/notes/a", "obj://ws1/notes/deep/b", "obj://ws1/notes/a"],
    );
    // Unwatched: the next write is told to nobody.
    await watch.unsubscribe();
    await got.done;
    // Both are requests like any other: checked and on the audit record.
    await until(
      () => {
        const audit = s.t.k.inspect.queryAudit({ persona: "w-reader", limit: 100 }).map((x) => `${x.op} ${x.status}`);
        return audit.includes("storage.watch SUCCESS") && audit.includes("storage.unwatch SUCCESS");
      },
      30_000,
      "storage.watch and storage.unwatch on the audit record",
    );
  });

  it("refuses watches outside the grant: another workspace, a wider pattern, write-only rights, event rights", async () => {
    const p = await s.t.persona("w-narrow", [
      { ops: ["storage.read"], targets: ["obj://ws2/notes/*", "obj://ws5/**"] },
      { ops: ["storage.write"], targets: ["obj://ws1/**"] },
      // event.* on every target there is: still no way to objects' changes.
      { ops: ["event.*"], targets: ["**"] },
    ]);
    const c = await s.t.connect(p.identity, [p.token]);
    const watch = (target: string) => c.call("storage.watch", target);
    // Another persona's workspace, a single object in it, or a pattern wider than the grant.
    await assert.rejects(watch("obj://ws1/**"), klass("PERMISSION"));
    await assert.rejects(watch("obj://ws1/secret"), klass("PERMISSION"));
    await assert.rejects(watch("obj://ws2/notes/**"), klass("PERMISSION"));
    await assert.rejects(watch("obj://ws2/*/x"), klass("PERMISSION"));
    // A wildcard workspace is no target at all (the client refuses it as the kernel would), and a bare workspace names no object.
    await assert.rejects(watch("obj://*/notes/x"), /obj:\/\/ must start with a lowercase name/);
    await assert.rejects(watch("obj://ws5/**/x"), klass("SEMANTIC", "'**' may only be the last segment"));
    await assert.rejects(watch("obj://ws5"), klass("SEMANTIC", "obj://<workspace>/<path or pattern>"));
    // event.subscribe cannot name objects, whatever it is granted on: topics and objects are different schemes.
    await assert.rejects(c.call("event.subscribe", "obj://ws1/**"), klass("SEMANTIC"));
    // What the grant does cover is watched.
    const ok = await c.watch("obj://ws2/notes/*");
    // A subscription to every topic hears nothing of the writes (its own to ws1 included).
    const all = collect(await c.subscribe("topic://**"));
    const mine = collect(ok);
    const writer = await s.t.admin();
    await c.storage.write("obj://ws1/mine", "x");
    await writer.storage.write("obj://ws1/secret", "not for w-narrow");
    await writer.storage.write("obj://ws2/notes/n", "for w-narrow");
    await until(() => mine.events.length >= 1, 30_000, "the notice of ws2/notes/n");
    await c.events.emit("topic://marker");
    await until(() => all.events.length >= 1, 30_000, "the marker event");
    assert.deepEqual(
      all.events.map((e) => e.topic),
      ["topic://marker"],
    );
    assert.deepEqual(
      changes(mine.events).map((x) => x.uri),
      ["obj://ws2/notes/n"],
    );
  });

  it("ends a watch whose capability was revoked, before it tells of another write", async () => {
    const p = await s.t.persona("w-revoked", [{ ops: ["storage.read"], targets: ["obj://ws3/**"] }]);
    const c = await s.t.connect(p.identity, [p.token]);
    const before = s.t.k.events.subscriptionCount();
    const got = collect(await c.watch("obj://ws3/**"));
    await s.admin.storage.write("obj://ws3/a", "1");
    await until(() => got.events.length >= 1, 30_000, "the first notice");
    await s.admin.tokens.revoke(p.id);
    await s.admin.storage.write("obj://ws3/a", "2");
    // The kernel ends it at the revocation; the client's attempt to watch again with the revoked token is refused; the iteration ends.
    await got.done;
    assert.equal(got.events.length, 1);
    assert.equal(s.t.k.events.subscriptionCount(), before, "the kernel holds the watch no more");
  });

  it("watches again with another capability it holds when the one that authorized the watch is revoked", async () => {
    const rights = [{ ops: ["storage.read"], targets: ["obj://ws6/**"] }];
    const p = await s.t.persona("w-twotokens", rights);
    const second = await s.admin.tokens.mint("w-twotokens", { rights, ttlMs: 3_600_000 });
    const c = await s.t.connect(p.identity, [p.token, second.token]);
    const resubscribed: string[] = [];
    c.on("resubscribed", (pattern: string) => resubscribed.push(pattern));
    const got = collect(await c.watch("obj://ws6/**"));
    await s.admin.tokens.revoke(p.id); // ends the first watch at once
    await until(() => resubscribed.length >= 1, 30_000, "the watch made again");
    const w = await s.admin.storage.write("obj://ws6/a", "told through the second capability");
    await until(() => got.events.length >= 1, 30_000, "a notice after the watch was made again");
    assert.deepEqual(changes(got.events), [{ uri: "obj://ws6/a", generation: w.generation, kind: "write" }]);
  });

  it("refuses unwatching another session's watch or with another target", async () => {
    const p = await s.t.persona("w-unwatch", [{ ops: ["storage.read"], targets: ["obj://ws4/**"] }]);
    const a = await s.t.connect(p.identity, [p.token]);
    const b = await s.t.connect(p.identity, [p.token]);
    const r = await a.call("storage.watch", "obj://ws4/x/**");
    const id = (r.payload as { subscription: number }).subscription;
    await assert.rejects(b.call("storage.unwatch", "obj://ws4/x/**", { subscription: id }), klass("SEMANTIC"));
    await assert.rejects(a.call("storage.unwatch", "obj://ws4/**", { subscription: id }), klass("SEMANTIC"));
    await a.call("storage.unwatch", "obj://ws4/x/**", { subscription: id });
    await assert.rejects(a.call("storage.unwatch", "obj://ws4/x/**", { subscription: id }), klass("SEMANTIC"));
  });
});

describe("storage.watch: a watch lives as long as its capability", () => {
  it("ends a watch whose capability expired, with a last event saying why", async () => {
    let skew = 0;
    await withKernel({ clock: () => Date.now() + skew }, async (t) => {
      const p = await t.persona("w-expiring", [{ ops: ["storage.read"], targets: ["obj://ws/**"] }], { ttlMs: 60_000 });
      const c = await t.connect(p.identity, [p.token], { refreshMarginMs: 0 });
      const r = await c.call("storage.watch", "obj://ws/**");
      const id = (r.payload as { subscription: number }).subscription;
      const seen: KEvent[] = [];
      c.on("event", (e: KEvent) => seen.push(e));
      const admin = await t.admin();
      await admin.storage.write("obj://ws/a", "1");
      await until(() => seen.length >= 1, 30_000, "the first notice");
      skew = 120_000;
      await admin.storage.write("obj://ws/a", "2");
      const last = await until(() => seen[1], 30_000, "the watch's last event");
      assert.equal(last.subscription, id);
      assert.equal(last.ended, `the capability ${p.id} that authorized this subscription expired`);
      assert.equal(last.data, undefined, "the last event tells no change");
      assert.equal(seen.length, 2, "no notice of the second write");
    });
  });
});

describe("storage.watch: bounds", () => {
  it("counts watches against the subscription bounds (RESOURCE); unwatching frees a slot", async () => {
    await withKernel({ maxSubscriptionsPerSession: 3 }, async (t) => {
      const p = await t.persona("w-many", [{ ops: ["storage.read", "event.subscribe"], targets: ["obj://ws/**", "topic://t"] }]);
      const c = await t.connect(p.identity, [p.token]);
      await c.call("event.subscribe", "topic://t");
      const first = await c.watch("obj://ws/a");
      await c.watch("obj://ws/b");
      await assert.rejects(c.watch("obj://ws/c"), klass("RESOURCE", "maxSubscriptionsPerSession"));
      await first.unsubscribe();
      await c.watch("obj://ws/c");
    });
  });
});
