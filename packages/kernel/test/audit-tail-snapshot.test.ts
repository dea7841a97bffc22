import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { SegmentIndex } from "../src/audit/verify-segments.js";
import { AUDIT_BATCHES_TABLE, type IndexSpan } from "../src/store/audit-segments.js";
import { removeHome } from "./harness.js";

/*
 * A live home's reader shows the batches past the index as its tail (SegmentIndex.setTail) and
 * cuts the tail at the index's end. The kernel's index step (another process) can commit between
 * the reader's read of that end and its read of the spans: here that interleaving is driven by
 * hand, a second connection committing an index step right after a chosen statement of the
 * reader's runs (no timing).
 */

const span = (first: number, last: number): IndexSpan => ({ first, last, segment: 1, offset: first * 100, length: 100 });

function home() {
  const dir = mkdtempSync(join(tmpdir(), "kpip-tail-snap-"));
  const path = join(dir, "kernel.db");
  const setup = new Database(path);
  setup.pragma("journal_mode = WAL");
  setup.exec(AUDIT_BATCHES_TABLE);
  setup.exec("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)");
  setup.close();
  // The kernel's connection: its index step puts a batch of the tail into the index.
  const kernel = new Database(path);
  const insert = kernel.prepare(
    "INSERT INTO audit_batches (first_seq, last_seq, segment, offset, length) VALUES (?, ?, ?, ?, ?)",
  );
  const indexStep = (s: IndexSpan) => insert.run(s.first, s.last, s.segment, s.offset, s.length);
  indexStep(span(1, 10));
  // The reader's connection, its statements wrapped: after the first run of one whose SQL holds
  // `hook.after`, the index step commits.
  const reader = new Database(path, { readonly: true });
  const hook: { after?: string; step?: IndexSpan; fired: boolean } = { fired: false };
  const wrap = (stmt: Database.Statement, sql: string): Database.Statement => {
    const fire = () => {
      if (hook.step && !hook.fired && hook.after && sql.includes(hook.after)) {
        hook.fired = true;
        indexStep(hook.step);
      }
    };
    const proxy: Database.Statement = new Proxy(stmt, {
      get(target, p) {
        const v = Reflect.get(target, p, target);
        if (p === "get" || p === "all")
          return (...args: unknown[]) => {
            const out = (v as (...a: unknown[]) => unknown).apply(target, args);
            fire();
            return out;
          };
        if (p === "pluck")
          return (on?: boolean) => {
            target.pluck(on);
            return proxy;
          };
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
    return proxy;
  };
  const db = new Proxy(reader, {
    get(target, p) {
      if (p === "prepare") return (sql: string) => wrap(target.prepare(sql), sql);
      const v = Reflect.get(target, p, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  const index = new SegmentIndex(db, join(dir, "audit"));
  // Records 11-30 committed past the index, in two batches.
  index.setTail([span(11, 20), span(21, 30)]);
  const close = () => {
    index.close();
    reader.close();
    kernel.close();
    removeHome(dir);
  };
  return { index, hook, close };
}

const firsts = (spans: IndexSpan[]) => spans.map((s) => s.first);

describe("a live reader's tail and an index step committing between its reads", () => {
  const cases: { name: string; after: string; run: (i: SegmentIndex) => unknown; want: unknown }[] = [
    // from: the tail cut at the old end (10), the spans read after the step (11-20 indexed).
    { name: "from", after: "DESC LIMIT 1", run: (i) => firsts(i.from(1)), want: [1, 11, 21] },
    // after: the spans read before the step, the tail cut at the new end (20).
    { name: "after", after: "first_seq > ?", run: (i) => firsts(i.after(0)), want: [1, 11, 21] },
    // below: the tail cut at the old end, the spans read after the step.
    { name: "below", after: "DESC LIMIT 1", run: (i) => firsts(i.below(31)), want: [21, 11, 1] },
    // count: the index's sum read before the step, the tail cut at the new end.
    { name: "count", after: "sum(last_seq", run: (i) => i.count(), want: 30 },
  ];
  for (const c of cases)
    it(`${c.name} shows each batch once (counts each record once) when the index step commits between the index's end and its spans`, () => {
      const h = home();
      try {
        h.hook.after = c.after;
        h.hook.step = span(11, 20);
        const got = c.run(h.index);
        assert.ok(h.hook.fired, `${c.name}: the index step committed between the reads`);
        assert.deepEqual(got, c.want, `${c.name}: each batch once`);
        // The next read sees the step: the same answer.
        assert.deepEqual(c.run(h.index), c.want, `${c.name}: after the step`);
      } finally {
        h.close();
      }
    });
});
