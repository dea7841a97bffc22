import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MAX_PATTERN_SEGMENTS, MAX_PATTERN_STARS } from "../src/limits.js";
import { kernelForSuite, klass, until } from "./harness.js";

/** `prefix` followed by `/a` until it has `n` segments after scheme://. */
function deep(prefix: string, n: number, last = ""): string {
  const have = prefix.slice(prefix.indexOf("://") + 3).split("/").length;
  return prefix + "/a".repeat(n - have - (last ? 1 : 0)) + (last ? `/${last}` : "");
}

describe("subscription patterns are bounded in segments and wildcards", () => {
  const s = kernelForSuite();

  it("event.subscribe and storage.watch refuse a pattern of more than 32 segments or 4 '*' (SEMANTIC); the kernel keeps serving", async () => {
    assert.equal(MAX_PATTERN_SEGMENTS, 32);
    const p = await s.t.persona("deep-subscriber", [
      { ops: ["event.subscribe", "event.emit"], targets: ["topic://deep/**"] },
      { ops: ["storage.read"], targets: ["obj://ws1/**"] },
    ]);
    const c = await s.t.connect(p.identity, [p.token], { maxAttempts: 1 });
    const tooDeep = klass("SEMANTIC", "at most 32 segments");
    // Red-team F3/F4: ~1,000 one-letter segments in a 2,040-byte pattern, and one segment past the bound.
    let long = "topic://deep/0";
    while (long.length + 2 <= 2040) long += "/a";
    await assert.rejects(c.call("event.subscribe", long), tooDeep);
    // Red-team F4: '*' or 'a' in the first 10 segments, then 'a's to ~2,040 bytes, then 'zz' (each emit to deep/a/a/… walked them all).
    let branching = "topic://deep";
    for (let b = 0; b < 10; b++) branching += b % 2 ? "/*" : "/a";
    while (branching.length + 5 <= 2040) branching += "/a";
    await assert.rejects(c.call("event.subscribe", `${branching}/zz`), tooDeep);
    await assert.rejects(c.call("event.subscribe", deep("topic://deep/*", 33)), tooDeep);
    await assert.rejects(c.call("event.subscribe", deep("topic://deep", 33, "**")), tooDeep);
    // More than 4 '*' (each may double what an emit walks at a depth): refused, '**' suggested.
    assert.equal(MAX_PATTERN_STARS, 4);
    await assert.rejects(c.call("event.subscribe", "topic://deep/*/*/*/*/*"), klass("SEMANTIC", "at most 4 '*' segments"));
    await assert.rejects(c.call("storage.watch", "obj://ws1/*/*/*/*/*/x"), klass("SEMANTIC", "at most 4 '*' segments"));
    let obj = "obj://ws1/0";
    while (obj.length + 2 <= 2040) obj += "/a";
    await assert.rejects(c.call("storage.watch", obj), tooDeep);
    await assert.rejects(c.call("storage.watch", deep("obj://ws1/x", 33, "**")), tooDeep);
    // Refused patterns hold nothing; the kernel and the session keep serving.
    assert.equal(s.t.k.events.subscriptionCount(), 0);
    assert.equal((await s.admin.system.health()).status, "ok");
    assert.equal((await c.events.emit("topic://deep/x")).subscribers, 0);
  });

  it("a legitimate deep pattern (32 segments, 4 '*') still subscribes and receives", async () => {
    const p = await s.t.persona("deep-ok", [
      { ops: ["event.subscribe", "event.emit"], targets: ["topic://deep/**"] },
      { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
    ]);
    const c = await s.t.connect(p.identity, [p.token], { maxAttempts: 1 });
    const pattern = deep("topic://deep/*/b/*/*", MAX_PATTERN_SEGMENTS, "*");
    const sub = await c.subscribe(pattern);
    const topic = pattern.replaceAll("*", "q");
    assert.equal((await c.events.emit(topic, { n: 1 })).subscribers, 1);
    const it = sub[Symbol.asyncIterator]();
    const ev = await it.next();
    assert.equal(ev.value?.topic, topic);
    // A watch of the deepest pattern allowed is told of a write under it.
    const watch = await c.watch(deep("obj://ws1/tree", MAX_PATTERN_SEGMENTS, "**"));
    const seen: string[] = [];
    void (async () => {
      for await (const e of watch) seen.push(e.topic);
    })();
    const path = deep("obj://ws1/tree", MAX_PATTERN_SEGMENTS + 4);
    await c.storage.write(path, "deep");
    await until(() => seen.includes(path), 30_000, "the change notice of the deep object");
    await sub.unsubscribe();
    await watch.unsubscribe();
  });
});
