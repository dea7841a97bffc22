import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AuditLog, type AuditRow, Kernel, openAuditReader, SqliteStore } from "@kpip/kernel";
import { generateIdentity } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import Database from "better-sqlite3";
import { globMatcher, patternTest } from "../src/audit/filters.js";
import { type QueryFilter, queryRecords } from "../src/audit/index-query.js";
import { Decoder } from "../src/audit/index-read.js";
import { AuditIndex } from "../src/audit/index-store.js";
import { indexedTimeline } from "../src/audit/index-timeline.js";
import { Summary } from "../src/audit/summary.js";
import { type TimelineFilter, timeline } from "../src/audit/timeline.js";
import { hashTree } from "./evidence.js";
import { connectAdmin, DISPATCH } from "./run.js";

const cli = new CommandWorker(DISPATCH);
after(() => cli.close());
const kpip = (args: string[]) => cli.run(args);

/** A deterministic stream of numbers in [0, 1). */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const TOKENS = Array.from({ length: 6 }, () => randomBytes(16).toString("hex"));

/**
 * A home with what a kernel writes (writes, a refusal, a persona registered), then `n` records of
 * every kind appended as a kernel would: intents with and without outcomes, an outcome without
 * its intent, a request id used again while its intent waited, refusals naming several tokens
 * (one unverified), audit.suppressed counts, token records whose detail names ids, targets of
 * every shape; then a change in the offline journal.
 */
async function variedHome(home: string, n: number): Promise<void> {
  await kernelRecords(home);
  await appendVaried(home, n, newState(7));
  // A change made with the CLI while no kernel ran: in the offline journal, not on the chain.
  const rm = await kpip(["persona", "remove", "bob", "--home", home]);
  assert.equal(rm.code, 0, rm.err);
}

type Waiting = { session: string; persona: string; requestId: number; op: string; target: string | null; ih: Uint8Array };
interface FillState {
  rnd: () => number;
  /** Intents waiting for their outcome: carried from one append to the next. */
  waiting: Waiting[];
  i: number;
}
const newState = (seed: number): FillState => ({ rnd: prng(seed), waiting: [], i: 0 });

async function kernelRecords(home: string): Promise<void> {
  const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
  await k.start();
  try {
    const admin = await connectAdmin(home);
    await admin.personas.register("bob", generateIdentity("bob").publicKey);
    for (let i = 0; i < 3; i++) await admin.storage.write(`obj://ws/${i}`, new TextEncoder().encode(`v${i}`));
    await admin.call("no.such.op", "obj://ws/x", {}).catch(() => undefined);
    await admin.close();
  } finally {
    await k.stop();
  }
}

async function appendVaried(home: string, n: number, st: FillState): Promise<void> {
  const store = new SqliteStore(join(home, "kernel.db"));
  store.useAuditSegments(join(home, "audit"));
  const log = new AuditLog(store, "kv", generateKeyPairSync("ed25519").privateKey, { batchMax: 64, checkpointEvery: 500 });
  const rnd = st.rnd;
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)] as T;
  const personas = ["alice", "alice/worker", "alice/a/b", "bob", "mallory", "carol"];
  const targets = [
    "obj://ws/a",
    "obj://ws/b/c",
    "obj://ws2/x",
    "obj://wsx",
    "kernel://",
    `token://${TOKENS[0]}`,
    `token://${TOKENS[1]}/x`,
    "topic://t/1",
    `op://${TOKENS[2]}`,
    "no scheme at all but a long text, longer than sixty-four characters, to be cut",
    null,
  ];
  const ops = ["storage.write", "storage.read", "token.mint", "system.health", "bus.publish", null];
  let last: Promise<void> = Promise.resolve();
  const add = (e: Partial<AuditRow> & Pick<AuditRow, "session" | "persona" | "phase">) => {
    last = log.append(e);
  };
  const waiting = st.waiting;
  for (let end = st.i + n; st.i < end; st.i++) {
    const i = st.i;
    let session = `s${Math.floor(rnd() * 40)
      .toString()
      .padStart(3, "0")}-${i % 3}`;
    let persona = pick(personas);
    // A persona and sessions of two short stretches only: a filter on them rules out whole chunks.
    if ((i >= 600 && i < 700) || (i >= 2300 && i < 2340)) {
      persona = "eve";
      session = `eve-${i % 2}`;
    }
    const x = rnd();
    const caps = rnd() < 0.8 ? `h1:${pick(TOKENS)}` : null;
    if (x < 0.25) {
      const w = { session, persona, requestId: i, op: pick(ops) ?? "storage.write", target: pick(targets), ih: randomBytes(32) };
      add({ ...w, phase: "intent", intentHash: w.ih, caps, intent: randomBytes(40) });
      // Session eve-1's intents get their outcome at once; eve-0's wait as the others' do (into later chunks).
      if (session === "eve-1") {
        add({ ...w, phase: "outcome", intentHash: w.ih, status: "SUCCESS", durationUs: 700 });
        continue;
      }
      waiting.push(w);
      // The same request id again while it waits (its first intent never gets its outcome).
      if (rnd() < 0.05) add({ ...w, phase: "intent", intentHash: w.ih, caps });
    } else if (x < 0.45 && waiting.length > 0) {
      const w = waiting.splice(Math.floor(rnd() * waiting.length), 1)[0] as Waiting;
      // Some intents never get theirs (a crash): skipped here; and an outcome whose intent is not on the record.
      if (rnd() < 0.05) continue;
      const ok = rnd() < 0.7;
      add({
        session: w.session,
        persona: w.persona,
        phase: "outcome",
        requestId: rnd() < 0.03 ? w.requestId + 1_000_000 : w.requestId,
        intentHash: w.ih,
        op: w.op,
        target: w.target,
        status: ok ? "SUCCESS" : "FAILURE",
        ...(ok ? {} : { errorClass: pick(["CAPABILITY", "NOT_FOUND", "SEMANTIC"]) }),
        durationUs: Math.floor(rnd() * 5_000_000),
        detail: rnd() < 0.2 ? JSON.stringify({ created: [pick(TOKENS)] }) : null,
      });
    } else if (x < 0.6) {
      add({
        session,
        persona,
        phase: "refused",
        requestId: i,
        op: pick(ops),
        target: pick(targets),
        caps: `h1:${pick(TOKENS)},unverified:${pick(TOKENS)}`,
        status: "FAILURE",
        errorClass: "CAPABILITY",
        message: "no capability allows it",
        durationUs: 10,
      });
    } else if (x < 0.65) {
      add({
        session,
        persona,
        phase: "refused",
        op: "audit.suppressed",
        status: "FAILURE",
        message: `${1 + Math.floor(rnd() * 500)} refusals not recorded one by one`,
        detail: JSON.stringify({ of: "refused", count: 12, ops: { "storage.read": 12 }, targets: ["obj://ws/a"] }),
      });
    } else if (x < 0.7) {
      add({
        session: "kernel",
        persona: "kernel",
        phase: "kernel",
        op: "token.derived",
        target: `token://${pick(TOKENS)}`,
        detail: JSON.stringify({ token: { id: pick(TOKENS), parent: pick(TOKENS) } }),
      });
    } else if (x < 0.75) {
      add({ session, persona, phase: "session", op: pick(["session.open", "session.close"]), detail: null });
    } else {
      add({
        session,
        persona,
        phase: "complete",
        requestId: i,
        op: pick(ops),
        target: pick(targets),
        caps,
        status: rnd() < 0.9 ? "SUCCESS" : "FAILURE",
        durationUs: Math.floor(rnd() * 3_000_000),
        // Now and then a traceparent not of the W3C shape (the index leaves it to the decoded record).
        traceparent:
          i % 50 === 0 ? "odd-trace-text" : `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`,
      });
    }
    if (i % 2000 === 0) await last;
  }
  await last;
  log.close();
  store.close();
}

/** The command lines compared: every filter the index decides, alone and together, and those it leaves to the scan. */
function variants(mid: string, session: string, tp: string): string[][] {
  const trace = tp.slice(3, 35);
  const t = TOKENS[0] as string;
  const tl = (...a: string[]) => ["timeline", "--json", "--limit", "40", ...a];
  const base = [
    [],
    ["--persona", "alice"],
    ["--persona", "alice/**"],
    ["--persona", "a*"],
    ["--op", "storage.*"],
    ["--op", "token.mint", "--persona", "mallory"],
    ["--target", "obj://ws/"],
    ["--target", "obj://ws"],
    ["--target", "obj://ws/**"],
    ["--target", "obj://w*"],
    ["--target", "no scheme at all but a long text, longer than sixty-four characters, to be cut"],
    ["--target", "token://"],
    ["--session", session],
    ["--since", mid],
    ["--until", mid, "--persona", "bob"],
    ["--token", t.slice(0, 6)],
    ["--token", t],
    ["--token", TOKENS[1] as string, "--op", "token.*"],
    ["--seq", "40..900"],
    ["--after", "700", "--persona", "carol"],
    ["--trace", "00"],
    ["--trace", trace],
    ["--trace", trace.slice(0, 8)],
    ["--trace", trace.slice(0, 11), "--persona", "alice/**"],
    ["--trace", trace.slice(0, 2)],
    ["--trace", tp],
    ["--trace", "odd-trace"],
    ["--trace", "odd-trace-text"],
    ["--persona", "eve"],
    ["--session", "eve-1"],
    ["--persona", "eve", "--op", "storage.write"],
    ["--until", mid, "--persona", "eve"],
  ];
  const out: string[][] = [];
  for (const b of base) {
    out.push(tl(...b));
    out.push(["timeline", "--summary", "--json", ...b]);
  }
  out.push(["timeline", "--limit", "5", "--persona", "mallory"]);
  out.push(["timeline", "--summary", "--limit", "3"]);
  for (const q of [
    [],
    ["--persona", "alice/**"],
    ["--op", "storage.*", "--status", "failure"],
    ["--since", mid],
    ["--status", "SUCCESS"],
    ["--persona", "eve"],
    ["--persona", "eve", "--since", mid],
  ])
    out.push(["query", "--json", "--limit", "25", ...q]);
  out.push(["query", "--persona", "bob", "--limit", "3"]);
  return out;
}

describe("the audit side index", () => {
  const dir = mkdtempSync(join(tmpdir(), "kpip-audit-index-"));
  const home = join(dir, "home");
  const cache = join(dir, "cache");
  let mid = "";
  let session = "";
  let tp = "";

  before(async () => {
    mkdirSync(home);
    // Half the records, an index built on them, then the rest (intents of the first half get their outcomes in the second).
    await kernelRecords(home);
    const st = newState(7);
    await appendVaried(home, 1500, st);
    const built = await kpip(["audit", "query", "--limit", "1", "--home", home, "--index-dir", cache]);
    assert.equal(built.code, 0, built.err);
    assert.equal(readdirSync(cache).length, 1);
    await appendVaried(home, 1500, st);
    const rm = await kpip(["persona", "remove", "bob", "--home", home]);
    assert.equal(rm.code, 0, rm.err);
    const reader = openAuditReader(join(home, "kernel.db"));
    try {
      const head = reader.headSeq() as number;
      mid = new Date((reader.record(Math.floor(head / 2)) as AuditRow).time).toISOString();
      session = ((reader.record(head - 3) as AuditRow).session ?? "").slice(0, 3);
      // A W3C traceparent of a record in the first half.
      for (let s = Math.floor(head / 3); tp === ""; s++) {
        const t = (reader.record(s) as AuditRow).traceparent;
        if (t?.startsWith("00-")) tp = t;
      }
    } finally {
      reader.close();
    }
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("answers every timeline, summary and query exactly as the full scan does, on a record of every kind, built at once or a piece at a time", async () => {
    const evidence = hashTree(home);
    for (const args of variants(mid, session, tp)) {
      const scan = await kpip(["audit", ...args, "--home", home, "--no-index"]);
      const idx = await kpip(["audit", ...args, "--home", home, "--index-dir", cache]);
      // A refusal (a token prefix naming two tokens) is compared as an answer is.
      assert.ok(
        scan.code === 0 || /names \d+ tokens/.test(scan.err + scan.out),
        `${args.join(" ")}: ${scan.code} ${scan.err} ${scan.out}`,
      );
      assert.equal(idx.code, scan.code, args.join(" "));
      assert.equal(idx.out, scan.out, `stdout of ${args.join(" ")}`);
      assert.equal(idx.err, scan.err, `stderr of ${args.join(" ")}`);
      if (scan.code === 0)
        assert.ok(scan.err.includes("offline journal") || scan.err.includes("offlineJournal"), "the journal's change is noted");
    }
    assert.ok(readdirSync(cache).length === 1, "one index, in the cache given");
    assert.deepEqual(hashTree(home), evidence, "nothing of the home changed");
  });

  it("decodes only what the filter cannot rule out, and after a build only the records appended since", async () => {
    const reader = openAuditReader(join(home, "kernel.db"));
    try {
      const notes: string[] = [];
      const idxDir = join(cache, "unit");
      const idx = AuditIndex.open(reader, home, idxDir, (s) => notes.push(s)) as AuditIndex;
      assert.ok(idx, notes.join());
      const head = reader.headSeq() as number;
      assert.equal(idx.lastSeq, head);
      const dec = new Decoder(reader);
      const page = indexedTimeline(reader, idx, { persona: globMatcher("mallory", "/") }, undefined, 0, 5, undefined, dec);
      assert.equal(page.rows.length, 5);
      assert.ok(page.more > 100, `${page.more} more`);
      assert.ok(dec.decoded < 800, `${dec.decoded} records decoded of ${head} for a page of 5`);
      // Opened again: the key holds, nothing is decoded to build it (the log did not grow).
      let read = 0;
      const records = reader.records.bind(reader);
      reader.records = (o) => {
        const it = records(o);
        return (function* () {
          for (const r of it) {
            read++;
            yield r;
          }
        })();
      };
      const again = AuditIndex.open(reader, home, idxDir, (s) => notes.push(s)) as AuditIndex;
      assert.equal(again.lastSeq, head);
      assert.equal(read, 0);
      // --trace by a trace id: only the records whose first 8 digits agree, and the odd traceparents (~1 in 200), are decoded.
      const byTrace = new Decoder(reader);
      const og = byTrace.get.bind(byTrace);
      const seen: number[] = [];
      byTrace.get = (x: number) => {
        seen.push(x);
        return og(x);
      };
      read = 0;
      const traced = indexedTimeline(reader, idx, { trace: tp.slice(3, 35) }, undefined, 0, 100, undefined, byTrace);
      assert.equal(read, 0, "--trace walks the index, not the log");
      assert.deepEqual(traced, timeline(reader, { trace: tp.slice(3, 35) }, 0, 100));
      assert.ok(traced.rows.length >= 1);
      // (asked for: the decoder reads a run of records around close ones)
      assert.ok(seen.length < 60, `${seen.length} records asked for of ${head} for --trace`);
      assert.deepEqual(notes, []);
    } finally {
      reader.close();
    }
  });

  it("answers as the scan across chunks (a chunk of 500 records) and with values past its string tables: rows, pages, pairs across chunk ends, summaries", () => {
    const reader = openAuditReader(join(home, "kernel.db"));
    try {
      const notes: string[] = [];
      const head = reader.headSeq() as number;
      // The times of records in the first and last fifths: chunks wholly past (before) them are ruled out by their times.
      const untilEarly = (reader.record(Math.floor(head / 5)) as AuditRow).time;
      const sinceLate = (reader.record(Math.floor((head * 4) / 5)) as AuditRow).time;
      let skipped = 0;
      for (const shape of [{ chunkRecords: 500 }, { chunkRecords: 700, dictEntries: 3 }]) {
        const idx = AuditIndex.open(
          reader,
          home,
          join(cache, `small-${shape.chunkRecords}`),
          (s) => notes.push(s),
          shape,
        ) as AuditIndex;
        assert.ok(idx.chunkCount > 3, `${idx.chunkCount} chunks`);
        const filters: [TimelineFilter, string | undefined][] = [
          [{}, undefined],
          [{ persona: globMatcher("alice/**", "/") }, undefined],
          [{ op: globMatcher("storage.*", ".") }, undefined],
          [{ target: globMatcher("obj://ws/**", "/", true) }, "obj://ws/**"],
          [{ target: globMatcher("token://", "/", true) }, "token://"],
          [{ seq: { from: 1200, to: 2600 } }, undefined],
          [{ token: TOKENS[2] as string }, undefined],
          // Selective across chunks: most chunks hold no record they let through (skipped unread, unless a row shown waits for an outcome there).
          [{ persona: globMatcher("eve", "/") }, undefined],
          [{ session: "eve-1" }, undefined],
          [{ persona: globMatcher("eve", "/"), op: globMatcher("storage.*", ".") }, undefined],
          [{ until: untilEarly }, undefined],
          [{ until: untilEarly, persona: globMatcher("e*", "/") }, undefined],
          [{ since: sinceLate, target: globMatcher("obj://ws/**", "/", true) }, "obj://ws/**"],
          [{ seq: { from: 2500, to: 2900 }, session: "eve" }, undefined],
          [{ trace: tp.slice(3, 35) }, undefined],
          [{ trace: tp.slice(3, 9) }, undefined],
          [{ trace: tp.slice(3, 15), persona: globMatcher("alice/**", "/") }, undefined],
          [{ trace: "0" }, undefined],
        ];
        for (const [f, target] of filters)
          for (const after of [0, 1700]) {
            for (const limit of [7, 5000]) {
              const a = timeline(reader, f, after, limit);
              const b = indexedTimeline(reader, idx, f, target, after, limit);
              assert.deepEqual(b, a, `${JSON.stringify({ ...f, target, after, limit })}`);
            }
            // A summary reads every row (no limit): once per filter and start.
            const sa = new Summary();
            const sb = new Summary();
            timeline(reader, f, after, 0, (r) => sa.add(r));
            indexedTimeline(reader, idx, f, target, after, 0, (r) => sb.add(r));
            assert.deepEqual(sb.groups(), sa.groups(), `summary ${JSON.stringify({ ...f, target, after })}`);
          }
        // A filter of two stretches reads only the chunks that hold them (and those an intent shown waits into);
        // with tables of 3 entries its values are past them (UNKNOWN, in every chunk): every chunk is read.
        if (shape.dictEntries === undefined) {
          idx.chunkReads = 0;
          const eve = indexedTimeline(reader, idx, { session: "eve-1" }, undefined, 0, 5000);
          assert.ok(eve.rows.length > 30, `${eve.rows.length} rows of eve-1`);
          assert.ok(idx.chunkReads < idx.chunkCount - 1, `${idx.chunkReads} of ${idx.chunkCount} chunks read`);
          idx.chunkReads = 0;
          assert.ok(queryRecords(reader, idx, { persona: patternTest("eve") }, 10).total > 50);
          assert.ok(idx.chunkReads < idx.chunkCount - 1, `query: ${idx.chunkReads} of ${idx.chunkCount} chunks read`);
          skipped++;
        }
        const queries: QueryFilter[] = [
          {},
          { persona: patternTest("alice/**") },
          { op: patternTest("storage.*"), status: "FAILURE" },
          { op: patternTest("*") },
          { status: "SUCCESS", persona: patternTest("mallory") },
          { persona: patternTest("eve") },
          { persona: patternTest("eve"), op: patternTest("storage.*") },
          { since: sinceLate },
        ];
        for (const q of queries)
          for (const limit of [4, 10_000]) {
            const a = queryRecords(reader, undefined, q, limit);
            const b = queryRecords(reader, idx, q, limit);
            assert.equal(b.total, a.total);
            assert.deepEqual(
              b.rows.map((r) => r.hash),
              a.rows.map((r) => r.hash),
            );
          }
      }
      assert.equal(skipped, 1);
      assert.deepEqual(notes, []);
    } finally {
      reader.close();
    }
  });

  it("skips a chunk by its summary only while no row shown waits for an outcome there (an intent before --until, its outcome an hour on)", async () => {
    const home2 = join(dir, "clocked");
    mkdirSync(home2);
    const t0 = 1_780_000_000_000;
    let now = t0;
    const realNow = Date.now;
    Date.now = () => now;
    try {
      const store = new SqliteStore(join(home2, "kernel.db"));
      store.useAuditSegments(join(home2, "audit"));
      const log = new AuditLog(store, "kc", generateKeyPairSync("ed25519").privateKey, { batchMax: 16, checkpointEvery: 100 });
      const ih = randomBytes(32);
      let last: Promise<void> = Promise.resolve();
      const zed = { session: "sz", persona: "zed", requestId: 10, op: "storage.write", target: "obj://z/1", intentHash: ih };
      for (let i = 0; i < 350; i++) {
        // The first 50 records in the first second, the rest an hour later.
        now = i < 50 ? t0 + i : t0 + 3_600_000 + i;
        if (i === 10) last = log.append({ ...zed, phase: "intent", intent: randomBytes(16) });
        else if (i === 200) last = log.append({ ...zed, phase: "outcome", status: "SUCCESS", durationUs: 1000 });
        else
          last = log.append({
            session: `s${i % 3}`,
            persona: "p",
            phase: "complete",
            requestId: 1000 + i,
            op: "storage.read",
            target: `obj://ws/${i}`,
            status: "SUCCESS",
            durationUs: 100,
          });
      }
      // The clock is read as a record is appended (its time), so the commit may come later.
      Date.now = realNow;
      await last;
      log.close();
      store.close();
    } finally {
      Date.now = realNow;
    }
    const reader = openAuditReader(join(home2, "kernel.db"));
    try {
      const idx = AuditIndex.open(reader, home2, join(cache, "clocked"), () => undefined, { chunkRecords: 40 }) as AuditIndex;
      assert.ok(idx.chunkCount >= 8, `${idx.chunkCount} chunks`);
      for (const f of [{ until: t0 + 1000 }, { until: t0 + 1000, persona: globMatcher("zed", "/") }, { since: t0 + 3_000_000 }])
        for (const limit of [3, 1000]) {
          idx.chunkReads = 0;
          const b = indexedTimeline(reader, idx, f, undefined, 0, limit);
          assert.deepEqual(b, timeline(reader, f, 0, limit), JSON.stringify({ ...f, limit }));
          if (f.until !== undefined && limit > 3) {
            const zedRow = b.rows.find((r) => r.persona === "zed");
            assert.equal(zedRow?.status, "SUCCESS", "the intent's row has its outcome, read from a chunk past --until");
            // The chunks to the outcome's are read, those past it are not.
            assert.ok(idx.chunkReads < idx.chunkCount - 2, `${idx.chunkReads} of ${idx.chunkCount} chunks read`);
          }
        }
    } finally {
      reader.close();
    }
  });

  it("is built again, never answered from, when the evidence at its path is another chain", async () => {
    const other = join(dir, "other");
    mkdirSync(other);
    await variedHome(other, 800);
    const args = ["timeline", "--json", "--summary", "--persona", "alice/**"];
    const first = await kpip(["audit", ...args, "--home", other, "--index-dir", cache]);
    assert.equal(first.code, 0, first.err);
    // Another home of the same length in its place: the index's last record has another hash.
    rmSync(other, { recursive: true, force: true });
    mkdirSync(other);
    await variedHome(other, 800);
    const scan = await kpip(["audit", ...args, "--home", other, "--no-index"]);
    const idx = await kpip(["audit", ...args, "--home", other, "--index-dir", cache]);
    assert.equal(idx.out, scan.out);
    assert.match(idx.err, /is not the one the audit index was built on/);
    assert.notEqual(idx.out, first.out, "the two homes differ");
    // Once that home is gone, the next run on another home removes its index from the cache.
    const hashed = () => readdirSync(cache).filter((n) => /^[0-9a-f]{32}$/.test(n)).length;
    assert.equal(hashed(), 2);
    rmSync(other, { recursive: true, force: true });
    const again = await kpip(["audit", "query", "--limit", "1", "--home", home, "--index-dir", cache]);
    assert.equal(again.code, 0, again.err);
    assert.equal(hashed(), 1);
  });

  it("answers by the full read when a record it names is gone from the log under an unchanged head (spans cut from the middle)", async () => {
    const cut = join(dir, "cut");
    cpSync(home, cut, { recursive: true });
    const built = await kpip(["audit", "query", "--limit", "1", "--home", cut, "--index-dir", cache]);
    assert.equal(built.code, 0, built.err);
    const db = new Database(join(cut, "kernel.db"));
    // A span in the middle (neither the first chunk's first record nor the last record).
    const spans = db.prepare("SELECT first_seq AS f, last_seq AS l FROM audit_batches ORDER BY first_seq").all() as {
      f: number;
      l: number;
    }[];
    assert.ok(spans.length >= 3, `${spans.length} spans`);
    const mid = spans[Math.floor(spans.length / 2)] as { f: number; l: number };
    db.prepare("DELETE FROM audit_batches WHERE first_seq = ?").run(mid.f);
    db.close();
    const timelineArgs = ["timeline", "--json", "--limit", "100000"];
    const scan = await kpip(["audit", ...timelineArgs, "--home", cut, "--no-index"]);
    const idx = await kpip(["audit", ...timelineArgs, "--home", cut, "--index-dir", cache]);
    assert.equal(idx.out, scan.out);
    assert.match(idx.err, /is in the audit index but not in the log: every record is decoded/);
    // Discarded: the next runs build it on the log as it is and answer from it.
    for (const args of [timelineArgs, ["query", "--json", "--limit", "100000"]]) {
      const full = await kpip(["audit", ...args, "--home", cut, "--no-index"]);
      const next = await kpip(["audit", ...args, "--home", cut, "--index-dir", cache]);
      assert.equal(next.out, full.out, args.join(" "));
      assert.equal(next.err, full.err, args.join(" "));
    }
    rmSync(cut, { recursive: true, force: true });
  });

  it("is never kept inside the home", async () => {
    const r = await kpip(["audit", "timeline", "--home", home, "--index-dir", join(home, "idx")]);
    assert.equal(r.code, 2);
    assert.match(r.err, /--index-dir .* is inside the home/);
    assert.ok(!existsSync(join(home, "idx")));
  });
  it("answers as the scan after a run was killed between writing its chunk files and its meta (the old meta names fewer records than the chunk file holds)", async () => {
    const grown = join(dir, "grown");
    mkdirSync(grown);
    await kernelRecords(grown);
    const st = newState(11);
    await appendVaried(grown, 700, st);
    const idxDir = join(cache, "killed");
    const shape = { chunkRecords: 500 };
    let reader = openAuditReader(join(grown, "kernel.db"));
    try {
      assert.ok(AuditIndex.open(reader, grown, idxDir, () => {}, shape));
    } finally {
      reader.close();
    }
    const oldMeta = readFileSync(join(idxDir, "meta.json"));
    await appendVaried(grown, 700, st);
    reader = openAuditReader(join(grown, "kernel.db"));
    try {
      assert.ok(AuditIndex.open(reader, grown, idxDir, () => {}, shape));
      // The kill: the chunk files of the second run are on disk, its meta never was.
      writeFileSync(join(idxDir, "meta.json"), oldMeta);
      const notes: string[] = [];
      const idx = AuditIndex.open(reader, grown, idxDir, (s) => notes.push(s), shape) as AuditIndex;
      assert.ok(idx, notes.join());
      const filters: [TimelineFilter, string | undefined][] = [
        [{}, undefined],
        [{ persona: globMatcher("alice/**", "/") }, undefined],
        [{ op: globMatcher("storage.*", ".") }, undefined],
        [{ target: globMatcher("obj://ws/**", "/", true) }, "obj://ws/**"],
      ];
      for (const [f, target] of filters) {
        const a = timeline(reader, f, 0, 5000);
        const b = indexedTimeline(reader, idx, f, target, 0, 5000);
        assert.deepEqual(b, a, JSON.stringify({ ...f, target }));
      }
      for (const q of [{ persona: patternTest("alice/**") }, { status: "SUCCESS" }] as QueryFilter[]) {
        const a = queryRecords(reader, undefined, q, 10_000);
        const b = queryRecords(reader, idx, q, 10_000);
        assert.equal(b.total, a.total);
        assert.deepEqual(
          b.rows.map((r) => r.seq),
          a.rows.map((r) => r.seq),
        );
      }
    } finally {
      reader.close();
    }
    rmSync(grown, { recursive: true, force: true });
  });

  it("removes the chunk files of records retention pruned from the log: its disk stays bounded as the log's, its answers the scan's", async () => {
    const kept = join(dir, "kept");
    mkdirSync(kept);
    await kernelRecords(kept);
    const st = newState(13);
    await appendVaried(kept, 2000, st);
    const idxDir = join(cache, "pruned");
    const shape = { chunkRecords: 300 };
    const chunkFiles = () => readdirSync(idxDir).filter((n) => n.startsWith("chunk-")).length;
    let reader = openAuditReader(join(kept, "kernel.db"));
    try {
      assert.ok(AuditIndex.open(reader, kept, idxDir, () => {}, shape));
    } finally {
      reader.close();
    }
    const before = chunkFiles();
    assert.ok(before >= 6, `${before} chunk files`);
    // Retention: all but the newest 300 or so records pruned (through the newest checkpoint that leaves them).
    const store = new SqliteStore(join(kept, "kernel.db"));
    store.useAuditSegments(join(kept, "audit"));
    const log = new AuditLog(store, "kv", generateKeyPairSync("ed25519").privateKey, { batchMax: 64, checkpointEvery: 500 });
    while (log.pruneSlice(300, 10_000) > 0);
    log.close();
    store.close();
    await appendVaried(kept, 200, st);
    reader = openAuditReader(join(kept, "kernel.db"));
    try {
      const first = reader.firstAuditSeq() as number;
      assert.ok(first > 1500, `first record ${first}`);
      const notes: string[] = [];
      const idx = AuditIndex.open(reader, kept, idxDir, (s) => notes.push(s), shape) as AuditIndex;
      assert.ok(idx, notes.join());
      // The chunks still holding a record of the log, and no more.
      const live = Math.ceil((reader.headSeq() as number) / 300) - Math.floor((first - 1) / 300);
      assert.ok(chunkFiles() <= live + 1, `${chunkFiles()} chunk files for ${live} chunks of the log (${before} before)`);
      for (const [f, target] of [
        [{}, undefined],
        [{ persona: globMatcher("alice/**", "/") }, undefined],
      ] as [TimelineFilter, string | undefined][]) {
        assert.deepEqual(indexedTimeline(reader, idx, f, target, 0, 5000), timeline(reader, f, 0, 5000));
        assert.deepEqual(indexedTimeline(reader, idx, f, target, first + 50, 5000), timeline(reader, f, first + 50, 5000));
      }
      const a = queryRecords(reader, undefined, { status: "SUCCESS" }, 10_000);
      const b = queryRecords(reader, idx, { status: "SUCCESS" }, 10_000);
      assert.equal(b.total, a.total);
      // Opened again: loads, nothing noted.
      assert.ok(AuditIndex.open(reader, kept, idxDir, (s) => notes.push(s), shape));
      assert.deepEqual(notes, []);
    } finally {
      reader.close();
    }
    rmSync(kept, { recursive: true, force: true });
  });

  it("answers by the full read when a chunk file is gone from under it (another run's rebuild, the cache cleared)", async () => {
    const gone = join(dir, "gone");
    cpSync(home, gone, { recursive: true });
    const idxDir = join(cache, "gone-chunk");
    const reader = openAuditReader(join(gone, "kernel.db"));
    try {
      const idx = AuditIndex.open(reader, gone, idxDir, () => {}, { chunkRecords: 400 }) as AuditIndex;
      assert.ok(idx.chunkCount > 3);
      rmSync(join(idxDir, "chunk-000001.bin"));
      const args = ["timeline", "--json", "--limit", "100000"];
      const scan = await kpip(["audit", ...args, "--home", gone, "--no-index"]);
      // The CLI's own index of this home, whose meta names the chunk: the meta of idxDir put in its place.
      const r = await kpip(["audit", "query", "--limit", "1", "--home", gone, "--index-dir", join(dir, "gone-cache")]);
      assert.equal(r.code, 0, r.err);
      const [hashed] = readdirSync(join(dir, "gone-cache"));
      const cliDir = join(dir, "gone-cache", hashed as string);
      rmSync(cliDir, { recursive: true });
      cpSync(idxDir, cliDir, { recursive: true });
      const got = await kpip(["audit", ...args, "--home", gone, "--index-dir", join(dir, "gone-cache")]);
      assert.equal(got.code, 0, got.err);
      assert.equal(got.out, scan.out);
      assert.match(got.err, /chunk file cannot be read .*every record is decoded/);
    } finally {
      reader.close();
    }
    rmSync(gone, { recursive: true, force: true });
  });

  it("is not used under a directory other users can change (an --index-dir in a shared, unsticky directory): the full read answers", async () => {
    const shared = join(dir, "shared");
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    // What looks like an index of a home that is gone: not swept from there either.
    const stray = join(shared, "idx", "0123456789abcdef0123456789abcdef");
    mkdirSync(stray, { recursive: true, mode: 0o700 });
    writeFileSync(join(stray, "home"), join(dir, "no-such-home"));
    const args = ["timeline", "--json", "--limit", "50", "--persona", "alice/**"];
    const scan = await kpip(["audit", ...args, "--home", home, "--no-index"]);
    const r = await kpip(["audit", ...args, "--home", home, "--index-dir", join(shared, "idx")]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, scan.out);
    assert.match(r.err, /can be changed by other users .*: not used/);
    assert.ok(existsSync(stray), "nothing swept from a directory other users can change");
    assert.deepEqual(
      readdirSync(join(shared, "idx")).filter((n) => existsSync(join(shared, "idx", n, "meta.json"))),
      [],
    );
    // Sticky (as /tmp): another user can neither rename nor remove what this one made there.
    chmodSync(shared, 0o1777);
    const sticky = await kpip(["audit", ...args, "--home", home, "--index-dir", join(shared, "idx")]);
    assert.equal(sticky.out, scan.out);
    assert.doesNotMatch(sticky.err, /not used/);
  });

  it("answers as the scan when built a piece at a time at random points (intents waiting across builds, small chunks and tables), for random filters and pages", async () => {
    const pieces = join(dir, "pieces");
    mkdirSync(pieces);
    await kernelRecords(pieces);
    const rnd = prng(23);
    const st = newState(29);
    const idxDir = join(cache, "pieces");
    for (let b = 0; b < 6; b++) {
      await appendVaried(pieces, 20 + Math.floor(rnd() * 300), st);
      const reader = openAuditReader(join(pieces, "kernel.db"));
      try {
        assert.ok(AuditIndex.open(reader, pieces, idxDir, () => {}, { chunkRecords: 97, dictEntries: 5 }));
      } finally {
        reader.close();
      }
    }
    const reader = openAuditReader(join(pieces, "kernel.db"));
    try {
      const idx = AuditIndex.open(reader, pieces, idxDir, () => {}) as AuditIndex;
      const head = reader.headSeq() as number;
      const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)] as T;
      const targets = [
        "obj://ws/",
        "obj://ws/**",
        "obj://w*",
        "token://",
        "kernel://",
        "obj://ws/b/c",
        "no scheme*",
        "topic://t/?",
      ];
      for (let n = 0; n < 60; n++) {
        const f: TimelineFilter = {};
        let target: string | undefined;
        if (rnd() < 0.4) f.persona = globMatcher(pick(["alice", "alice/**", "bob", "carol", "a*"]), "/");
        if (rnd() < 0.3) f.op = globMatcher(pick(["storage.*", "token.mint", "session.*"]), ".");
        if (rnd() < 0.3) {
          target = pick(targets);
          f.target = globMatcher(target, "/", true);
        }
        if (rnd() < 0.2) f.token = (pick(TOKENS) as string).slice(0, pick([4, 32]));
        if (rnd() < 0.2) f.seq = { from: Math.floor(rnd() * head), to: Math.floor(rnd() * head) + 50 };
        const after = rnd() < 0.3 ? Math.floor(rnd() * head) : 0;
        const limit = pick([1, 7, 100_000]);
        const what = JSON.stringify({ n, target, after, limit, token: f.token, seq: f.seq });
        assert.deepEqual(indexedTimeline(reader, idx, f, target, after, limit), timeline(reader, f, after, limit), what);
        const sa = new Summary();
        const sb = new Summary();
        timeline(reader, f, after, 0, (r) => sa.add(r));
        indexedTimeline(reader, idx, f, target, after, 0, (r) => sb.add(r));
        assert.deepEqual(sb.groups(), sa.groups(), `summary ${what}`);
      }
    } finally {
      reader.close();
    }
    rmSync(pieces, { recursive: true, force: true });
  });
});
