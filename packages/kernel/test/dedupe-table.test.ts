import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { type CborMap, decodeCanonical, encodeCanonical, type Response, withEncodedBody } from "@kpip/protocol";
import fc from "fast-check";
import { DedupeCache, type DedupeTag, type DedupeVerdict } from "../src/pipeline/dedupe.js";
import type { KeyHash } from "../src/pipeline/dedupe-table.js";
import type { AuditStore } from "../src/store/types.js";

// The Map-based cache the table replaced (main at 79e06e7, commitWith left out: it does not touch
// memory), verbatim but for its name and for what came after it (`forget` and `settled` name their
// attempt and leave another's alone; a running entry is never evicted nor expired, and running
// entries are bounded in all and per persona tree, `admits`; an answered entry becomes the
// newest): the model the table must behave exactly like. Its tag is a string (base64 of the
// bytes here); the table keeps the bytes.
interface Entry {
  tag: string;
  authority: string;
  expires: number;
  pending?: Promise<Response>;
  tree?: string;
}
interface RefTag {
  tag: string;
  authority: string;
}
const NEW: DedupeVerdict = Object.freeze({ kind: "new" });
const CONFLICT: DedupeVerdict = Object.freeze({ kind: "conflict" });
const RERUN: DedupeVerdict = Object.freeze({ kind: "rerun" });

class MapDedupeCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    readonly windowMs: number,
    private readonly store?: Pick<AuditStore, "lookupDedupe">,
    private readonly maxEntries = 100_000,
    private readonly perTree = maxEntries,
  ) {}

  /** Whether answers are kept in a store (and `commitWith` records them). */
  get durable(): boolean {
    return this.store !== undefined;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Classifies a request by its {@link dedupeTag}; `effects`: the op changes state, so its answer is in the store. */
  check(key: string, t: RefTag, now: number, effects: boolean): DedupeVerdict {
    const e = this.entries.get(key);
    if (e !== undefined && (e.pending !== undefined || e.expires >= now)) {
      if (e.tag !== t.tag || e.authority !== t.authority) return CONFLICT;
      if (e.pending) return { kind: "answer", response: e.pending };
      if (!effects) return RERUN;
    } else if (e !== undefined) {
      this.entries.delete(key);
    }
    if (!effects) return NEW;
    // Ops with effects: the durable record (it also survives a kernel restart).
    const row = this.store?.lookupDedupe(key, now);
    if (!row) return NEW;
    if (t.authority !== "" || Buffer.from(row.hash).toString("base64") !== t.tag) return CONFLICT;
    // Sent as the recorded bytes, not encoded again from their decoding.
    const response = withEncodedBody(decodeCanonical(row.response) as unknown as Response, row.response);
    return { kind: "answer", response };
  }

  /** Whether an attempt of `tree` may begin: fewer than maxEntries running, fewer than perTree of its tree. */
  admits(tree: string): boolean {
    const running = [...this.entries.values()].filter((e) => e.pending !== undefined);
    return running.length < this.maxEntries && running.filter((e) => e.tree === tree).length < this.perTree;
  }

  /** The first attempt is running: a duplicate arriving now waits for the same answer. */
  running(key: string, t: RefTag, pending: Promise<Response>, now: number, tree: string): void {
    this.put(key, { tag: t.tag, authority: t.authority, expires: now + this.windowMs, pending, tree });
  }

  /** The attempt settled: keep only its hash (its response, if any is kept, is in the store). */
  settled(key: string, t: RefTag, now: number, pending?: Promise<Response>): void {
    // Kept in place (a delete and a set per request left the Map deleted slots to rehash): the
    // entry sits where `running` put it, a request's duration early for `sweep`, which only frees memory.
    const e = this.entries.get(key);
    // Another attempt with these ids is running: it stays as it is, and settles itself.
    if (e?.pending !== undefined && e.pending !== pending) return;
    if (e !== undefined && e.tag === t.tag && e.authority === t.authority) {
      e.pending = undefined;
      e.tree = undefined;
      e.expires = now + this.windowMs;
      // The newest answered entry.
      this.entries.delete(key);
      this.entries.set(key, e);
    } else this.put(key, { tag: t.tag, authority: t.authority, expires: now + this.windowMs });
  }

  private put(key: string, e: Entry): void {
    this.entries.delete(key);
    this.entries.set(key, e);
    if (this.entries.size > this.maxEntries) {
      // Evict the oldest tenth at once: a Map keeps deleted slots at its front until it
      // rehashes, so evicting one entry per insert walked ever more of them (25 µs a request
      // once full, halving throughput); a batch walks them once and lets the Map compact.
      // Answered entries only: a running one stays.
      let n = Math.max(1, Math.floor(this.maxEntries / 10));
      for (const [k, e] of this.entries) {
        if (e.pending !== undefined) continue;
        this.entries.delete(k);
        if (--n === 0) break;
      }
    }
  }

  /** Forgets the attempt `pending` if it is still the one remembered (it threw: no answer to give a retry). */
  abandoned(key: string, pending: Promise<Response>): void {
    if (this.entries.get(key)?.pending === pending) this.entries.delete(key);
  }

  /** Forgets the attempt `pending` (its failure was transient), so its retry runs again; never another's. */
  forget(key: string, pending: Promise<Response>): void {
    this.abandoned(key, pending);
  }

  /** Drops expired answered entries (Map order is insertion order, so, of answered ones, expiry order). */
  sweep(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.pending !== undefined) continue;
      if (e.expires >= now) break;
      this.entries.delete(k);
    }
  }
}

// Keys as the pipeline builds them (persona:instance:id), with ids that must stay apart ("01"
// is not "1"), an unsafe integer, and keys of other shapes (each its own client).
const KEYS = [
  "alice:aa:1",
  "alice:aa:2",
  "alice:aa:10",
  "alice:bb:1",
  "bob:aa:1",
  "alice/w:aa:1",
  "k:1",
  "k:01",
  "k:001",
  "k:0",
  "k:00",
  "k:",
  "k",
  ":1",
  "1",
  "a:b:c",
  "x:9007199254740991",
  "x:9007199254740992",
  "x:90071992547409910",
  "x:1e3",
];
/** A key's persona tree, as the pipeline would name its session's. */
const treeOf = (k: string): string => k.split(/[:/]/)[0] as string;
const TAGS = ["one", "two", "three"].map((s) => createHash("sha256").update(s).digest());
const AUTHORITIES = ["", "g1", "g2"];
const answer = (id: number): Response => ({ version: 1, id, status: "SUCCESS" });
// The durable records an op with effects is answered from, for some keys.
const ROWS = new Map(
  [0, 6, 7, 13].map((k, i) => [
    KEYS[k] as string,
    { hash: TAGS[i % TAGS.length] as Buffer, response: encodeCanonical(answer(i) as unknown as CborMap), expires: 0 },
  ]),
);
const store = { lookupDedupe: (key: string) => ROWS.get(key) } as unknown as Pick<AuditStore, "lookupDedupe">;

// Clock steps hit the window's edge (an entry expires after now + WINDOW_MS, not at it).
// Hashes for the index: the real keyed one, and weak ones that force keys to share slots.
const HASHES: Record<string, KeyHash | undefined> = {
  keyed: undefined,
  constant: () => 0,
  "two slots": (_c, lo) => lo & 1,
  "client only": (c) => c * 7,
  // The last slots of the index: runs wrap past its end.
  wrapping: (_c, lo) => -1 - (lo & 3),
};

type Step =
  | { op: "check"; key: number; tag: number; auth: number; effects: boolean }
  | { op: "running"; key: number; tag: number; auth: number }
  | { op: "settled"; key: number; tag: number; auth: number }
  /** The run `running` last registered under the key settles, naming the record it was given (as the pipeline does). */
  | { op: "settledRun"; key: number }
  | { op: "abandoned"; key: number; promise: number }
  | { op: "forget"; key: number; promise: number }
  /** The run `running` last registered under the key failed transiently, naming its record (as the pipeline does). */
  | { op: "forgetRun"; key: number }
  | { op: "sweep" }
  | { op: "advance"; ms: number };

const key = fc.nat(KEYS.length - 1);
const tag = fc.nat(TAGS.length - 1);
const auth = fc.nat(AUTHORITIES.length - 1);
const step: fc.Arbitrary<Step> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant("check" as const), key, tag, auth, effects: fc.boolean() }), weight: 4 },
  { arbitrary: fc.record({ op: fc.constant("running" as const), key, tag, auth }), weight: 4 },
  { arbitrary: fc.record({ op: fc.constant("settled" as const), key, tag, auth }), weight: 4 },
  { arbitrary: fc.record({ op: fc.constant("settledRun" as const), key }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant("abandoned" as const), key, promise: fc.nat(8) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant("forget" as const), key, promise: fc.nat(8) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant("forgetRun" as const), key }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant("sweep" as const) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant("advance" as const), ms: fc.constantFrom(0, 1, 30, 99, 100, 101, 150) }), weight: 2 },
);

const WINDOW_MS = 100;

async function sameVerdict(mine: DedupeVerdict, model: DedupeVerdict, at: string): Promise<void> {
  assert.equal(mine.kind, model.kind, at);
  if (mine.kind !== "answer" || model.kind !== "answer") return;
  if (model.response instanceof Promise) assert.equal(mine.response, model.response, `${at}: the running attempt's own promise`);
  else assert.deepEqual(await mine.response, model.response, `${at}: the recorded answer`);
}

describe("dedupe table: the Map cache's behaviour in typed arrays", () => {
  it("behaves exactly like the Map cache it replaced, over random histories (collisions, the bound, expiry)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...Object.keys(HASHES)),
        fc.integer({ min: 0, max: 12 }),
        fc.integer({ min: 1, max: 6 }),
        fc.array(step, { maxLength: 120 }),
        async (hashName, maxEntries, perTree, steps) => {
          const mine = new DedupeCache(WINDOW_MS, store as never, maxEntries, HASHES[hashName], perTree);
          const model = new MapDedupeCache(WINDOW_MS, store, maxEntries, perTree);
          const promises: Promise<Response>[] = [];
          // Per key, the last run registered: its tag, promise and the record running() answered.
          const runs = new Map<number, { t: DedupeTag; p: Promise<Response>; record: number }>();
          let now = 1_000;
          for (const [i, s] of steps.entries()) {
            const at = `step ${i} ${JSON.stringify(s)} (${hashName}, bound ${maxEntries}, per tree ${perTree})`;
            if (s.op === "advance") now += s.ms;
            else if (s.op === "sweep") {
              mine.sweep(now);
              model.sweep(now);
            } else if (s.op === "forget") {
              const p = promises[s.promise] ?? Promise.resolve(answer(-1));
              mine.forget(KEYS[s.key] as string, p);
              model.forget(KEYS[s.key] as string, p);
            } else if (s.op === "forgetRun") {
              const run = runs.get(s.key);
              if (run) {
                // Its record may have been evicted, forgotten or reused since: then it is looked up.
                mine.forget(KEYS[s.key] as string, run.p, run.record);
                model.forget(KEYS[s.key] as string, run.p);
              }
            } else if (s.op === "settledRun") {
              const run = runs.get(s.key);
              if (run) {
                // Its record may have been evicted, forgotten or reused since: then it is looked up.
                mine.settled(KEYS[s.key] as string, run.t, now, run.record, run.p);
                model.settled(
                  KEYS[s.key] as string,
                  { tag: Buffer.from(run.t.bytes).toString("base64"), authority: run.t.authority },
                  now,
                  run.p,
                );
              }
            } else if (s.op === "abandoned") {
              const p = promises[s.promise] ?? Promise.resolve(answer(-1));
              mine.abandoned(KEYS[s.key] as string, p);
              model.abandoned(KEYS[s.key] as string, p);
            } else {
              const k = KEYS[s.key] as string;
              const bytes = TAGS[s.tag] as Buffer;
              const authority = AUTHORITIES[s.auth] as string;
              const t: DedupeTag = { bytes, authority };
              const ref = { tag: bytes.toString("base64"), authority };
              if (s.op === "check") await sameVerdict(mine.check(k, t, now, s.effects), model.check(k, ref, now, s.effects), at);
              else if (s.op === "settled") {
                mine.settled(k, t, now);
                model.settled(k, ref, now);
              } else {
                // As the pipeline does: an attempt begins only when admitted (running records are never evicted).
                const tree = treeOf(k);
                const admitted = mine.admits(tree);
                assert.equal(admitted, model.admits(tree), `${at}: admits`);
                if (admitted) {
                  const p = Promise.resolve(answer(promises.length));
                  promises.push(p);
                  runs.set(s.key, { t, p, record: mine.running(k, t, p, now, tree) });
                  model.running(k, ref, p, now, tree);
                }
              }
            }
            assert.equal(mine.size, model.size, `${at}: size`);
            assert.ok(mine.size <= maxEntries, `${at}: within the bound, running records included`);
          }
          // What each remembers now, key by key, then nothing once every key is forgotten.
          for (const [k, name] of KEYS.entries()) {
            for (const effects of [false, true]) {
              const t = { bytes: TAGS[k % 3] as Buffer, authority: AUTHORITIES[k % 3] as string };
              const ref = { tag: t.bytes.toString("base64"), authority: t.authority };
              await sameVerdict(mine.check(name, t, now, effects), model.check(name, ref, now, effects), `final ${name}`);
            }
          }
          // Running records never expire: each run still remembered fails, then every record expired by then.
          for (const [key, run] of runs) {
            mine.forget(KEYS[key] as string, run.p, run.record);
            model.forget(KEYS[key] as string, run.p);
          }
          assert.equal(mine.runningCount, 0, "no run left");
          mine.sweep(Number.POSITIVE_INFINITY);
          assert.equal(mine.size, 0);
          assert.equal(mine.interned, 0, "no client or authority left interned");
        },
      ),
      { numRuns: 600 },
    );
  });

  it("evicts the oldest tenth past the bound, oldest first, and a key put again becomes the newest", () => {
    const t = { bytes: TAGS[0] as Buffer, authority: "g" };
    const c = new DedupeCache(60_000, undefined, 20, () => 3);
    for (let i = 0; i < 20; i++) c.settled(`p:i:${i}`, t, 0);
    c.running("p:i:0", t, Promise.resolve(answer(0)), 0);
    c.settled("p:i:20", t, 0);
    assert.equal(c.size, 19);
    for (let i = 1; i <= 2; i++) assert.equal(c.check(`p:i:${i}`, t, 1, false).kind, "new", `${i} evicted`);
    for (let i = 3; i <= 20; i++) assert.equal(c.check(`p:i:${i}`, t, 1, false).kind, "rerun", `${i} kept`);
    assert.equal(c.check("p:i:0", t, 1, false).kind, "answer", "put again: the newest");
  });

  it("refuses a tag that is not 32 bytes", () => {
    const c = new DedupeCache(60_000);
    assert.throws(() => c.settled("p:i:1", { bytes: new Uint8Array(31), authority: "" }, 0), RangeError);
    assert.equal(c.size, 0);
    assert.equal(c.interned, 0);
  });
});

describe("dedupe table under ids a peer chooses (security)", () => {
  const tagOf = (s: string): DedupeTag => ({ bytes: createHash("sha256").update(s).digest(), authority: "grant-a" });
  const INSTANCE = "00112233445566778899aabbccddeeff";

  it("ids chosen to share a slot under a plain hash spread under the keyed one: no long runs, exact verdicts", () => {
    const c = new DedupeCache(60_000);
    // Multiples of the index size (and of every smaller power of two): one slot each under `id mod size`.
    for (let k = 0; k < 100_000; k++) c.settled(`mallory:${INSTANCE}:${k * 2 ** 20}`, tagOf(`m${k}`), 0);
    assert.equal(c.size, 100_000);
    // A uniform hash at this load leaves runs of a few dozen; one shared slot would be one run of 100,000.
    const longest = c.longestRun();
    assert.ok(longest < 200, `longest run ${longest}`);
    for (const k of [0, 1, 77_777, 99_999]) {
      assert.equal(c.check(`mallory:${INSTANCE}:${k * 2 ** 20}`, tagOf(`m${k}`), 1, false).kind, "rerun");
      assert.equal(c.check(`mallory:${INSTANCE}:${k * 2 ** 20}`, tagOf("other"), 1, false).kind, "conflict");
      assert.equal(c.check(`mallory:${INSTANCE}:${k * 2 ** 20 + 1}`, tagOf(`m${k}`), 1, false).kind, "new");
    }
  });

  it("keys that share a slot are never confused: another persona's or instance's same id gets nothing of the first, within the bound", async () => {
    // Every key in one slot: the worst a hash could do.
    const c = new DedupeCache(60_000, undefined, 1_000, () => 0);
    const first = Promise.resolve(answer(1));
    c.running(`alice:${INSTANCE}:7`, tagOf("alice's"), first, 0);
    for (let id = 0; id < 3_000; id++) c.settled(`mallory:${INSTANCE}:${id === 7 ? 8 : id}`, tagOf(`m${id}`), 0);
    assert.ok(c.size <= 1_000, `size ${c.size}`);
    // Alice's running request outlived the flood (a running record is never evicted); the others'
    // same ids, in the same slot, get nothing of it.
    for (const key of [
      `mallory:${INSTANCE}:7`,
      "mallory:00112233445566778899aabbccddeefe:7",
      `alice:${INSTANCE}:07`,
      `alice:${INSTANCE}:70`,
    ]) {
      const v = c.check(key, tagOf("alice's"), 1, true);
      assert.equal(v.kind, "new", key);
    }
    const mine = c.check(`alice:${INSTANCE}:7`, tagOf("alice's"), 1, true);
    assert.equal(mine.kind, "answer");
    assert.equal((mine as { response: unknown }).response, first);
  });

  it("a running record is never evicted by the bound nor expired by the window: a persona flooding the table evicts answered records only", async () => {
    const c = new DedupeCache(1_000, undefined, 100, undefined, 100);
    const alice = new Promise<Response>(() => {});
    const r = c.running(`alice:${INSTANCE}:1`, tagOf("alice's"), alice, 0, "alice");
    // Mallory's answered requests, ten times the bound, and time well past alice's window.
    for (let id = 0; id < 1_000; id++) c.settled(`mallory:${INSTANCE}:${id}`, tagOf(`m${id}`), id);
    c.sweep(10_000);
    assert.equal(c.size, 1, "the answered ones expired; the running one stays");
    const v = c.check(`alice:${INSTANCE}:1`, tagOf("alice's"), 10_001, true);
    assert.equal(v.kind, "answer", "a retry waits for the running attempt");
    assert.equal((v as { response: unknown }).response, alice);
    // Answered, it ages like any: its window counts from the answer.
    c.settled(`alice:${INSTANCE}:1`, tagOf("alice's"), 10_002, r, alice);
    assert.equal(c.check(`alice:${INSTANCE}:1`, tagOf("alice's"), 11_002, false).kind, "rerun");
    c.sweep(11_003);
    assert.equal(c.size, 0);
    assert.equal(c.interned, 0);
  });

  it("running records are bounded instead: a tree past its share, or the table full of them, is not admitted; a put without room throws", () => {
    const c = new DedupeCache(60_000, undefined, 8, undefined, 3);
    const forever = () => new Promise<Response>(() => {});
    const runs: [string, Promise<Response>][] = [];
    for (let id = 0; id < 3; id++) {
      assert.ok(c.admits("mallory"));
      const p = forever();
      c.running(`mallory:${INSTANCE}:${id}`, tagOf(`m${id}`), p, 0, "mallory");
      runs.push([`mallory:${INSTANCE}:${id}`, p]);
    }
    assert.equal(c.admits("mallory"), false, "mallory's share is running");
    assert.match(c.refusal("mallory"), /persona tree mallory has 3 requests running/);
    // Its sub-personas' and agents' sessions count in its tree (the pipeline passes the session's tree).
    assert.equal(c.admits("alice"), true, "another tree has its own share");
    for (const tree of ["t1", "t2"])
      for (let id = 0; id < (tree === "t1" ? 3 : 2); id++)
        c.running(`${tree}:${INSTANCE}:${id}`, tagOf(`${tree}${id}`), forever(), 0, tree);
    assert.equal(c.runningCount, 8);
    assert.equal(c.admits("alice"), false, "the table is full of running records");
    assert.match(c.refusal("alice"), /the kernel has 8 requests running/);
    assert.throws(() => c.running(`alice:${INSTANCE}:1`, tagOf("a"), forever(), 0, "alice"), RangeError);
    // Answered records come and go beside them; the running ones stay.
    for (let id = 0; id < 50; id++) c.settled(`bob:${INSTANCE}:${id}`, tagOf(`b${id}`), 0);
    assert.equal(c.runningCount, 8);
    for (const [key] of runs) assert.equal(c.check(key, tagOf("other"), 1, true).kind, "conflict", key);
    // One answered: room for its tree again.
    const [key, p] = runs[0] as [string, Promise<Response>];
    c.settled(key, tagOf("m0"), 1, -1, p);
    assert.equal(c.admits("mallory"), true);
  });

  it("client instances and grants used once are not kept: what the table interns goes with its last request", () => {
    const c = new DedupeCache(60_000, undefined, 500);
    for (let i = 0; i < 5_000; i++) {
      const instance = createHash("sha256").update(`i${i}`).digest("hex").slice(0, 32);
      c.settled(`mallory:${instance}:1`, { bytes: tagOf(`${i}`).bytes, authority: `grant-${i}` }, 0);
    }
    assert.ok(c.size <= 500);
    assert.ok(c.interned <= 2 * c.size, `interned ${c.interned} for ${c.size} requests`);
    c.sweep(60_001);
    assert.equal(c.size, 0);
    assert.equal(c.interned, 0);
  });
});
