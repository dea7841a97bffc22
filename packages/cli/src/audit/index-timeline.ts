import type { AuditReader } from "@kpip/kernel";
import { bitsOf, type Decision, Decoder, eachEntry, MAYBE, mayHold, memo, NO, smallValue, wideValue, YES } from "./index-read.js";
import {
  type AuditIndex,
  type Chunk,
  FLAG_DETAIL_ID,
  FLAG_TRACE,
  FLAG_TRACE_ODD,
  FLAG_WHOLE_TARGET,
  NULL_ID,
  type SummaryCol,
  UNKNOWN,
} from "./index-store.js";
import {
  fromRecord,
  matches,
  mergeOutcome,
  PAIR_LOOKBACK,
  type TimelineFilter,
  type TimelinePage,
  type TimelineRow,
  timeline,
  tokensMatched,
} from "./timeline.js";

/**
 * `timeline` (timeline.ts) answered from the index: the same walk, the same rows in the same
 * order, but a record the columns rule out is never decoded, nor is a row only counted. The
 * pairing of an intent with its outcome is the full scan's, kept in the index (an outcome names
 * its intent, an intent the one it replaced while waiting): a page starting later pairs the same
 * way whenever that intent is in the window, which is what the walk from PAIR_LOOKBACK before the
 * page does. `target`: --target's text (the filter's closure cannot be looked into). `light`:
 * the rows go to a summary, which reads only persona, op, phase, outcome, scope, seq and start:
 * those are taken from the columns without decoding. --trace and --derived are answered by the scan.
 */
export function indexedTimeline(
  reader: AuditReader,
  idx: AuditIndex,
  f: TimelineFilter,
  target: string | undefined,
  after: number,
  limit: number,
  visit?: (row: TimelineRow) => void,
  dec = new Decoder(reader),
): TimelinePage {
  // --trace by a trace id's prefix is decided from the trace column; a whole traceparent or other text by the scan.
  if (f.tokenSet !== undefined || (f.trace !== undefined && !TRACE_PREFIX.test(f.trace)))
    return timeline(reader, f, after, limit, visit);
  const collect = visit === undefined;
  const d = idx.dicts;
  const phases = d.phase.values;
  const rows: TimelineRow[] = [];
  // Intents shown (or visited) and waiting for their outcome, by seq, in their order.
  const shown = new Map<number, TimelineRow>();
  let more = 0;
  const tokens = new Set<string>();
  const first = Math.max(after + 1, f.seq?.from ?? 1);
  const from = Math.max(1, first - PAIR_LOOKBACK, reader.firstAuditSeq() ?? 1);
  const { decide, cannotMatch } = decider(idx, f, target);
  // A chunk is passed over unread when none of its records can be a row and no row shown waits
  // for an outcome (which it may hold): its records are then each ruled out, paired with nothing.
  const skip = (ci: number) =>
    shown.size === 0 && ((ci + 1 < idx.chunkCount && idx.chunkFirst(ci + 1) <= first) || (idx.chunkCount > 1 && cannotMatch(ci)));

  /** A row for the summary from the columns; undefined where a value is not in its table. */
  const light = (c: Chunk, i: number, seq: number, phase: string): TimelineRow | undefined => {
    const persona = wideValue(d.persona, c.persona[i] as number);
    const op = wideValue(d.op, c.op[i] as number);
    const scope = wideValue(d.scope, c.scope[i] as number);
    const status = smallValue(d.status, c.status[i] as number);
    const errorClass = wideValue(d.errorClass, c.errorClass[i] as number);
    if (
      typeof persona !== "string" ||
      op === undefined ||
      scope === undefined ||
      status === undefined ||
      errorClass === undefined
    )
      return undefined;
    const start = c.start[i] as number;
    return {
      seq,
      outcomeSeq: null,
      phase,
      start,
      end: null,
      kernel: "",
      persona,
      session: "",
      requestId: null,
      op,
      // The scope column: the summary groups by scopeOf, the same on it as on the whole target.
      target: scope,
      status,
      errorClass,
      message: null,
      tokens: [],
      traceparent: null,
      execution: null,
      domain: null,
      detail: null,
    };
  };
  // --token reads a row's tokens and whole target (tokensMatched): decoded.
  const summaryOnly = !collect && f.token === undefined;
  const row = (c: Chunk, i: number, seq: number, phase: string): TimelineRow =>
    (summaryOnly && light(c, i, seq, phase)) || fromRecord(dec.get(seq));
  const complete = (p: TimelineRow, c: Chunk, i: number, seq: number) => {
    if (!collect) {
      const status = smallValue(d.status, c.status[i] as number);
      const errorClass = wideValue(d.errorClass, c.errorClass[i] as number);
      if (status !== undefined && errorClass !== undefined) {
        p.outcomeSeq = seq;
        p.end = c.time[i] as number;
        p.status = status;
        p.errorClass = errorClass;
        return;
      }
    }
    mergeOutcome(p, dec.get(seq));
  };

  eachEntry(
    idx,
    from,
    (c, i) => {
      const seq = c.seq[i] as number;
      if (f.seq && seq > f.seq.to && shown.size === 0) return false;
      const pid = c.phase[i] as number;
      const phase = phases[pid] !== undefined && pid !== NULL_ID ? (phases[pid] as string) : dec.get(seq).phase;
      const pair = c.pair[i] as number;
      if (phase === "outcome" && pair >= from) {
        const p = shown.get(pair);
        if (p) {
          shown.delete(pair);
          complete(p, c, i, seq);
          visit?.(p);
        }
        return true;
      }
      if (phase === "intent" && pair >= from) {
        const p = shown.get(pair);
        if (p) {
          shown.delete(pair);
          visit?.(p);
        }
      }
      let r: TimelineRow | undefined;
      let keep = false;
      if (seq > after) {
        let k = decide(c, i);
        if (k === MAYBE) {
          r = fromRecord(dec.get(seq));
          k = matches(r, f) ? YES : NO;
        }
        keep = k === YES;
      }
      if (phase === "intent" && keep && (!collect || rows.length < limit)) {
        r ??= row(c, i, seq, phase);
        shown.set(seq, r);
      }
      if (!keep) return true;
      if (f.token !== undefined) {
        r ??= fromRecord(dec.get(seq));
        for (const id of tokensMatched(r, f.token)) tokens.add(id);
      }
      if (!collect) {
        if (phase !== "intent") visit(r ?? row(c, i, seq, phase));
      } else if (rows.length < limit) rows.push(r ?? row(c, i, seq, phase));
      else more++;
      return true;
    },
    skip,
  );
  if (!collect) for (const p of shown.values()) visit(p);
  return { rows, more, next: more > 0 ? (rows.at(-1)?.seq ?? null) : null, tokens };
}

/** A --trace the trace column decides: a prefix of a trace id (lower-case hex, as traceparents carry it). */
export const TRACE_PREFIX = /^[0-9a-f]{1,32}$/;

/** The characters of a glob before its first wildcard: every target it matches begins with them. */
function literalPrefix(pattern: string): string {
  const at = pattern.search(/[*?[]/);
  return at < 0 ? pattern : pattern.slice(0, at);
}

/** Whether a target whose scope column is `head` (all of it when `whole`) begins with `p`. */
function headStarts(head: string, whole: boolean, p: string): Decision {
  if (whole || p.length <= head.length) return head.startsWith(p) ? YES : NO;
  return p.startsWith(head) ? MAYBE : NO;
}

/**
 * The filter as a test of the columns (timeline.ts `matches`, on what the index knows exactly;
 * MAYBE for the rest), and as a test of a chunk's summary: `cannotMatch(ci)` true when every
 * record of chunk `ci` is surely NO (one column's test rules out every id the chunk holds, or its times).
 */
function decider(
  idx: AuditIndex,
  f: TimelineFilter,
  target: string | undefined,
): { decide: (c: Chunk, i: number) => Decision; cannotMatch: (ci: number) => boolean } {
  const d = idx.dicts;
  const persona = f.persona && memo(d.persona, f.persona);
  const op = f.op && memo(d.op, f.op);
  const sess = f.session !== undefined ? memo(d.session, (s) => s.startsWith(f.session as string)) : undefined;
  const glob = target !== undefined && /[*?[]/.test(target);
  // A glob ending in /** also matches the bare prefix: its literal part is the shorter one.
  const lit = target === undefined ? "" : literalPrefix(glob && target.endsWith("/**") ? target.slice(0, -3) : target);
  const targetSeen = new Map<number, Decision>();
  const targetOf = (c: Chunk, i: number): Decision =>
    targetId(c.scope[i] as number, ((c.flags[i] as number) & FLAG_WHOLE_TARGET) !== 0);
  const targetId = (id: number, whole: boolean): Decision => {
    if (id === NULL_ID) return NO;
    if (id === UNKNOWN) return MAYBE;
    const key = id * 2 + (whole ? 1 : 0);
    let k = targetSeen.get(key);
    if (k === undefined) {
      const head = d.scope.values[id] as string;
      k = headStarts(head, whole, lit);
      if (glob && k !== NO) k = whole ? ((f.target as (t: string) => boolean)(head) ? YES : NO) : MAYBE;
      targetSeen.set(key, k);
      if (targetSeen.size > 1_000_000) targetSeen.clear();
    }
    return k;
  };
  const t = f.token;
  const tokenList = t !== undefined ? memo(d.tokens, (s) => s !== "" && s.split(",").some((x) => x.startsWith(t))) : undefined;
  const about = `token://${t}`;
  // --trace: its first 8 digits against the column (exact for a prefix of 8 or fewer; a longer one is decoded when they agree).
  const tr = f.trace;
  const trLen = tr !== undefined ? Math.min(tr.length, 8) : 0;
  const trHead = tr !== undefined ? Number.parseInt(tr.slice(0, trLen), 16) : 0;
  const trShift = 32 - 4 * trLen;
  // The column tests a chunk's summary is held against (the same tests as below, per id), made at the first chunk asked about.
  let chunkTests: [SummaryCol, Uint8Array][] | undefined;
  const cannotMatch = (ci: number): boolean => {
    const s = idx.summary(ci);
    if (f.since !== undefined && s.maxStart < f.since) return true;
    if (f.until !== undefined && s.minStart > f.until) return true;
    if (!chunkTests) {
      chunkTests = [];
      if (persona) chunkTests.push(["persona", bitsOf(d.persona, persona)]);
      if (op) chunkTests.push(["op", bitsOf(d.op, (id) => (id === NULL_ID ? NO : op(id)))]);
      if (target !== undefined) {
        const t = (id: number) => {
          const a = targetId(id, true);
          return a !== NO ? a : targetId(id, false);
        };
        chunkTests.push(["scope", bitsOf(d.scope, t)]);
      }
      if (sess) chunkTests.push(["session", bitsOf(d.session, sess)]);
    }
    for (const [col, bits] of chunkTests) if (!mayHold(s, col, bits)) return true;
    return false;
  };
  const decide = (c: Chunk, i: number): Decision => {
    let maybe = false;
    const seq = c.seq[i] as number;
    if (f.seq && (seq < f.seq.from || seq > f.seq.to)) return NO;
    const start = c.start[i] as number;
    if (f.since !== undefined && start < f.since) return NO;
    if (f.until !== undefined && start > f.until) return NO;
    if (persona) {
      const k = persona(c.persona[i] as number);
      if (k === NO) return NO;
      if (k === MAYBE) maybe = true;
    }
    if (op) {
      const id = c.op[i] as number;
      if (id === NULL_ID) return NO;
      const k = op(id);
      if (k === NO) return NO;
      if (k === MAYBE) maybe = true;
    }
    if (target !== undefined) {
      const k = targetOf(c, i);
      if (k === NO) return NO;
      if (k === MAYBE) maybe = true;
    }
    if (sess) {
      const k = sess(c.session[i] as number);
      if (k === NO) return NO;
      if (k === MAYBE) maybe = true;
    }
    if (tr !== undefined) {
      const fl = c.flags[i] as number;
      if ((fl & FLAG_TRACE) !== 0) {
        if ((c.trace[i] as number) >>> trShift !== trHead) return NO;
        if (tr.length > 8) maybe = true;
      } else if ((fl & FLAG_TRACE_ODD) !== 0) maybe = true;
      else return NO; // no traceparent
    }
    if (tokenList && t !== undefined) {
      const id = c.tokens[i] as number;
      const k = id === NULL_ID ? NO : tokenList(id);
      if (k !== YES) {
        const sc = c.scope[i] as number;
        const a =
          sc === NULL_ID
            ? NO
            : sc === UNKNOWN
              ? MAYBE
              : headStarts(d.scope.values[sc] as string, ((c.flags[i] as number) & FLAG_WHOLE_TARGET) !== 0, about);
        if (a !== YES) {
          const inDetail = t.length === 32 && ((c.flags[i] as number) & FLAG_DETAIL_ID) !== 0;
          if (k === NO && a === NO && !inDetail) return NO;
          maybe = true;
        }
      }
    }
    return maybe ? MAYBE : YES;
  };
  return { decide, cannotMatch };
}
