import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import type { Grant, Response } from "@kpip/protocol";
import { DedupeCache, type DedupeTag, dedupeHash, dedupeTag } from "../src/pipeline/dedupe.js";

const h = (s: string): DedupeTag => ({ bytes: createHash("sha256").update(s).digest(), authority: "" });
const answer = (id: number): Response => ({ version: 1, id, status: "SUCCESS" });

describe("dedupe cache (unit)", () => {
  it("the dedupe hash is the SHA-256 of the intent hash then the authority (the grant's digest, its rights caveats and maxExp included, or the sorted capability ids as JSON), as a Hash object made it", () => {
    const grant = {
      subject: "alice",
      rights: ["storage.read"],
      opFilters: [],
      targetFilters: ["obj://ws/**"],
      limits: { rate: 5 },
      workspaces: ["ws"],
      pairFilters: [[{ ops: ["storage.read"], targets: ["obj://ws/a"] }]],
      maxExp: 1_900_000_000_000,
    } as unknown as Grant;
    // The grant's digest, pinned: SHA-256 of JSON [subject, rights, opFilters, targetFilters, limits,
    // workspaces, domains, pairFilters, above, maxExp] (null for the absent). Dedupe records keep it
    // across restarts: a change of the formula turns a retry across an upgrade into id reuse.
    const digest = Buffer.from("f95289c54f8e3ced5579584db109f764be12225b262efc5b3d5bb30013f66a4b", "hex");
    for (let i = 0; i < 3; i++) {
      const intent = createHash("sha256").update(`intent ${i}`).digest();
      const byGrant = createHash("sha256").update(intent).update(digest).digest();
      assert.deepEqual(dedupeHash(intent, { grant, capIds: ["h1:x"] }), byGrant);
      const byIds = createHash("sha256")
        .update(intent)
        .update(JSON.stringify(["h1:b", "inline:é"]))
        .digest();
      assert.deepEqual(dedupeHash(intent, { capIds: ["inline:é", "h1:b"] }), byIds);
      // Kept apart: a later hash does not change an earlier one (the reused input buffer).
      const first = dedupeHash(intent, { grant, capIds: [] });
      dedupeHash(createHash("sha256").update("other").digest(), { grant, capIds: [] });
      assert.deepEqual(first, byGrant);
    }
  });

  it("stays within its bound, keeps the newest, evicts the oldest", () => {
    const c = new DedupeCache(60_000, undefined, 100);
    for (let i = 0; i < 1000; i++) c.settled(`k${i}`, h(`i${i}`), 0);
    assert.ok(c.size <= 100 && c.size >= 90, `size ${c.size}`);
    assert.equal(c.check("k999", h("i999"), 1, false).kind, "rerun", "newest kept");
    assert.equal(c.check("k0", h("i0"), 1, false).kind, "new", "oldest evicted");
  });

  it("classifies: new, conflict on another intent, the running attempt's answer, rerun of a read-only op", async () => {
    const c = new DedupeCache(60_000);
    assert.equal(c.check("a", h("x"), 0, true).kind, "new");
    const p = Promise.resolve(answer(1));
    c.running("a", h("x"), p, 0);
    const v = c.check("a", h("x"), 1, true);
    assert.equal(v.kind, "answer");
    assert.deepEqual(await (v as { response: Promise<Response> }).response, answer(1));
    assert.equal(c.check("a", h("y"), 1, true).kind, "conflict");
    c.settled("b", h("r"), 0);
    assert.equal(c.check("b", h("r"), 1, false).kind, "rerun");
    assert.equal(c.check("b", h("r"), 60_001, false).kind, "new", "expired");
  });

  it("a read-only tag is the intent hash and the authority side by side: either differing is a conflict, never the effect form", () => {
    const intent = createHash("sha256").update("read").digest();
    const wide = { capIds: ["h1:wide"] };
    const narrow = { capIds: ["h2:narrow"] };
    const mine = dedupeTag(intent, wide, false);
    assert.deepEqual(mine, { bytes: intent, authority: JSON.stringify(["h1:wide"]) });
    const c = new DedupeCache(60_000);
    c.settled("r", mine, 0);
    assert.equal(c.check("r", dedupeTag(intent, { capIds: ["h1:wide"] }, false), 1, false).kind, "rerun");
    assert.equal(c.check("r", dedupeTag(intent, narrow, false), 1, false).kind, "conflict");
    const other = createHash("sha256").update("other").digest();
    assert.equal(c.check("r", dedupeTag(other, wide, false), 1, false).kind, "conflict");
    // The same intent as an op with effects (its hash bound to the same authority) is another request.
    const effect = dedupeTag(intent, wide, true);
    assert.equal(effect.authority, "");
    assert.equal(c.check("r", effect, 1, true).kind, "conflict");
  });

  it("answers a settled op with effects from the store, and refuses another intent under its key", () => {
    const row = { key: "s", hash: Buffer.from(h("w").bytes), response: Buffer.from([0xa0]), expires: 10_000 };
    const store = { lookupDedupe: (k: string) => (k === "s" ? row : undefined) };
    const c = new DedupeCache(60_000, store as never);
    c.settled("s", h("w"), 0);
    assert.equal(c.check("s", h("w"), 1, true).kind, "answer");
    assert.equal(c.check("s", h("other"), 1, true).kind, "conflict");
  });

  it("a transient failure forgets only its own attempt: a second attempt registered under the same ids (its record replacing the first's) stays remembered while it runs", async () => {
    const pendingForever = () => new Promise<Response>(() => {});
    const c = new DedupeCache(1000);
    const first = pendingForever();
    const r1 = c.running("k", h("x"), first, 0);
    // A running record is not expired by the window (it counts from the answer): a retry waits.
    const v0 = c.check("k", h("x"), 2000, true);
    assert.equal(v0.kind, "answer");
    assert.equal((v0 as { response: Promise<Response> }).response, first);
    const second = pendingForever();
    const r2 = c.running("k", h("x"), second, 2000);
    // The first attempt's retryable failure.
    c.forget("k", first, r1);
    const v = c.check("k", h("x"), 2001, true);
    assert.equal(v.kind, "answer", "the second attempt is still remembered");
    assert.equal((v as { response: Promise<Response> }).response, second, "a duplicate waits for the second attempt");
    // Its own failure forgets it (by its record, or by its key).
    c.forget("k", second, r2);
    assert.equal(c.check("k", h("x"), 2002, true).kind, "new");
    c.running("k", h("x"), second, 2003);
    c.forget("k", second);
    assert.equal(c.check("k", h("x"), 2004, true).kind, "new");

    // The bound does not evict a running attempt's record: answered records go instead.
    const b = new DedupeCache(60_000, undefined, 10);
    const early = pendingForever();
    b.running("e", h("y"), early, 0);
    for (let i = 0; i < 10; i++) b.settled(`f${i}`, h(`f${i}`), 0);
    assert.equal(b.check("e", h("y"), 1, true).kind, "answer", "not evicted");
    assert.ok(b.size <= 10);
  });

  it("a settled attempt leaves another attempt running under its ids remembered (its own record was replaced)", () => {
    const c = new DedupeCache(1000);
    const first = Promise.resolve(answer(1));
    const r1 = c.running("k", h("x"), first, 0);
    const second = new Promise<Response>(() => {});
    c.running("k", h("x"), second, 2000);
    c.settled("k", h("x"), 2001, r1, first);
    const v = c.check("k", h("x"), 2002, false);
    assert.equal(v.kind, "answer", "a duplicate of the running attempt waits for it, not runs beside it");
    assert.equal((v as { response: Promise<Response> }).response, second);
  });
});
