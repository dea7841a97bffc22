import type { AuditReader, AuditRecord } from "@kpip/kernel";
import { isoTime } from "../util.js";
import { recordTokenIds, traceId } from "./filters.js";

/** One request (or one act of the kernel) on the timeline: an intent and its outcome are one row. */
export interface TimelineRow {
  /** The first record's sequence number (the intent's, for an op with effects). */
  seq: number;
  /** The outcome record paired with the intent, if any. */
  outcomeSeq: number | null;
  phase: string;
  start: number;
  end: number | null;
  kernel: string;
  persona: string;
  session: string;
  requestId: number | null;
  op: string | null;
  target: string | null;
  status: string | null;
  errorClass: string | null;
  message: string | null;
  tokens: string[];
  traceparent: string | null;
  execution: string | null;
  domain: string | null;
  /** The `detail` column (JSON text) of the outcome, else of the first record, when the home has it. */
  detail: string | null;
}

export interface TimelineFilter {
  trace?: string;
  session?: string;
  token?: string;
  /** Whole token ids (--token with --derived: a token and its descendants): a row authorized by or about any of them. */
  tokenSet?: ReadonlySet<string>;
  target?: (t: string) => boolean;
  since?: number;
  until?: number;
  seq?: { from: number; to: number };
  persona?: (p: string) => boolean;
  op?: (o: string) => boolean;
}

export interface TimelinePage {
  rows: TimelineRow[];
  /**
   * With a --token filter: the token ids its rows (shown or counted) were matched by. A prefix may
   * name several: a persona grinds a token attenuated offline (its id is a hash of the caveats it
   * chose) until its id begins as another token's does.
   */
  tokens: Set<string>;
  /** Rows that match after the last one shown. */
  more: number;
  /** The --after value for the next page (the last row shown), when there is one. */
  next: number | null;
}

/** Records read before a page's first (--after, --seq) to pair its outcomes with their intents. */
export const PAIR_LOOKBACK = 65_536;

/** Pairs an outcome with its intent: same kernel, session, request id and intent hash. */
export const pairKey = (r: AuditRecord) =>
  `${r.kernel}\0${r.session}\0${r.requestId}\0${r.intentHash ? Buffer.from(r.intentHash).toString("hex") : ""}`;

export function fromRecord(r: AuditRecord): TimelineRow {
  // A single record is written when its request ends; its duration says when it began.
  const single = r.phase !== "intent";
  const start = single && r.durationUs !== null ? r.time - Math.round(r.durationUs / 1000) : r.time;
  return {
    seq: r.seq,
    outcomeSeq: null,
    phase: r.phase,
    start,
    end: single ? r.time : null,
    kernel: r.kernel,
    ...requestFields(r),
    tokens: recordTokenIds(r.phase, r.caps),
    traceparent: r.traceparent,
    execution: r.execution,
    domain: r.domain,
    detail: r.detail ?? null,
  };
}

const startsWith = (v: string | null | undefined, p: string) => v?.startsWith(p) === true;

export function matches(row: TimelineRow, f: TimelineFilter): boolean {
  if (f.seq && (row.seq < f.seq.from || row.seq > f.seq.to)) return false;
  if (f.since !== undefined && row.start < f.since) return false;
  if (f.until !== undefined && row.start > f.until) return false;
  if (f.persona && !f.persona(row.persona)) return false;
  if (f.op && (row.op === null || !f.op(row.op))) return false;
  if (f.target && (row.target === null || !f.target(row.target))) return false;
  if (f.session !== undefined && !row.session.startsWith(f.session)) return false;
  if (f.trace !== undefined && !startsWith(traceId(row.traceparent), f.trace) && row.traceparent !== f.trace) return false;
  if (f.token !== undefined) {
    const t = f.token;
    // In the detail (a minted token, a revocation's ended list) only a whole id counts: a short prefix would match any text.
    const inDetail = t.length === 32 && detailNamesToken(row, t);
    if (!row.tokens.some((id) => id.startsWith(t)) && !startsWith(row.target, `token://${t}`) && !inDetail) return false;
  }
  if (f.tokenSet !== undefined) {
    const set = f.tokenSet;
    const about = row.target?.startsWith("token://") === true && set.has(row.target.slice("token://".length));
    if (!row.tokens.some((id) => set.has(id)) && !about && !detailNamesAny(row, set)) return false;
  }
  return true;
}

/**
 * The timeline: every record in order, an op's intent and outcome merged into one row (start
 * at the intent, end at the outcome); every other record (a read, a refusal, a session, an act
 * of the kernel) is a row of its own. Shows the first `limit` matching rows after `after`, and
 * counts the rest.
 */
export function timeline(
  reader: AuditReader,
  f: TimelineFilter,
  after: number,
  limit: number,
  visit?: (row: TimelineRow) => void,
): TimelinePage {
  // With `visit`, every matching row is handed to it once complete (an intent's with its outcome,
  // or at the end without one) and none is kept: a summary of a flood holds no row list.
  const collect = visit === undefined;
  const rows: TimelineRow[] = [];
  // Intents waiting for their outcome: the row shown, or null for one that is filtered out or past the page.
  const pending = new Map<string, TimelineRow | null>();
  let more = 0;
  const tokens = new Set<string>();
  // From PAIR_LOOKBACK records before the first row wanted: an outcome there pairs with an intent
  // that may be before it. From record 1 every page of a long log (a persona's flood of reads)
  // walked everything before it again. An outcome whose intent is further back shows as its own row.
  let waiting = 0;
  const first = Math.max(after + 1, f.seq?.from ?? 1);
  const from = Math.max(1, first - PAIR_LOOKBACK);
  for (const r of reader.records(from > 1 ? { from } : undefined)) {
    // Past the --seq range, only outcomes of rows already shown are still wanted.
    if (f.seq && r.seq > f.seq.to && waiting === 0) break;
    if (r.phase === "outcome") {
      const key = pairKey(r);
      const p = pending.get(key);
      if (p !== undefined) {
        pending.delete(key);
        if (p) {
          waiting--;
          mergeOutcome(p, r);
          visit?.(p);
        }
        continue;
      }
    }
    const row = fromRecord(r);
    const keep = row.seq > after && matches(row, f);
    if (r.phase === "intent") {
      const shown = keep && (!collect || rows.length < limit);
      const key = pairKey(r);
      // An intent waiting under the same key will never get its outcome: its row is complete now
      // (it was lost to a summary), and this one waits in its place, in its own order.
      const prev = pending.get(key);
      if (prev) {
        waiting--;
        visit?.(prev);
      }
      pending.delete(key);
      pending.set(key, shown ? row : null);
      if (shown) waiting++;
    }
    if (!keep) continue;
    if (f.token !== undefined) for (const id of tokensMatched(row, f.token)) tokens.add(id);
    if (!collect) {
      if (r.phase !== "intent") visit(row);
    } else if (rows.length < limit) rows.push(row);
    else more++;
  }
  // Intents whose outcome never came (NO OUTCOME).
  if (!collect) for (const p of pending.values()) if (p) visit(p);
  return { rows, more, next: more > 0 ? (rows.at(-1)?.seq ?? null) : null, tokens };
}

/** An intent's row completed by its outcome record. */
export function mergeOutcome(p: TimelineRow, r: AuditRecord): void {
  p.outcomeSeq = r.seq;
  p.end = r.time;
  p.status = r.status;
  p.errorClass = r.errorClass;
  p.message = r.message;
  p.detail = r.detail ?? p.detail;
}

/** The ids of `row` a --token prefix `t` matches ({@link matches}): its tokens, the token it is about, a whole id in its detail. */
export function tokensMatched(row: TimelineRow, t: string): string[] {
  const ids = row.tokens.filter((id) => id.startsWith(t));
  if (row.target?.startsWith(`token://${t}`)) ids.push(row.target.slice("token://".length));
  if (t.length === 32 && detailNamesToken(row, t)) ids.push(t);
  return ids;
}

/**
 * The keys under which the kernel names a token in a record's detail: a minted or derived token
 * (`token`, and its `id`, `parent`, `minted`), what a revocation ended, an agent's spawn, the
 * tokens a handshake refused (`refused[].token`).
 */
const TOKEN_KEYS = new Set([
  "token",
  "id",
  "parent",
  "minted",
  "revoked",
  "ended",
  "mintedFor",
  "older",
  "family",
  "spawn",
  "spawnerSpawn",
]);

/**
 * Whether the row's detail names token `id` where the kernel names tokens ({@link TOKEN_KEYS}).
 * Not any text of it: a derived token's caveats are its holder's text (a `domains` caveat may be
 * another persona's token id, put there to list the holder's rows under that token), and a token
 * refused at the handshake whose signature did not verify (`?<id>` among the row's tokens) only
 * claims its id.
 */
function detailNamesToken(row: TimelineRow, id: string): boolean {
  const d = row.detail;
  if (d === null || !d.includes(`"${id}"`)) return false;
  return detailNames(row, d, (x) => x === id);
}

/** As {@link detailNamesToken}, for any id of `set` (the detail is parsed only when its text holds one). */
function detailNamesAny(row: TimelineRow, set: ReadonlySet<string>): boolean {
  const d = row.detail;
  if (d === null) return false;
  let found = false;
  // Every string of the JSON text whole, escapes and all: a pattern that skipped some (a persona's
  // long name, an escaped quote) read the text between two strings as one, out of step, and missed
  // every id after it (case 626).
  for (const m of d.matchAll(/"((?:[^"\\]|\\.)*)"/g))
    if (set.has(m[1] as string)) {
      found = true;
      break;
    }
  return found && detailNames(row, d, (x) => set.has(x));
}

function detailNames(row: TimelineRow, d: string, wanted: (id: string) => boolean): boolean {
  const walk = (v: unknown, named: boolean, refused: boolean): boolean => {
    if (typeof v === "string") return named && wanted(v) && !(refused && row.tokens.includes(`?${v}`));
    if (Array.isArray(v)) return v.some((x) => walk(x, named, refused));
    if (v === null || typeof v !== "object") return false;
    return Object.entries(v).some(([k, x]) => k !== "caveats" && walk(x, TOKEN_KEYS.has(k), refused || k === "refused"));
  };
  return walk(detailValue(d), false, false);
}

type RequestFields = "persona" | "session" | "requestId" | "op" | "target" | "status" | "errorClass" | "message";

/** Who asked what and how it ended: the fields a record, its JSON and a timeline row share, in their order. */
export function requestFields(r: Pick<AuditRecord, RequestFields>): Pick<AuditRecord, RequestFields> {
  const { persona, session, requestId, op, target, status, errorClass, message } = r;
  return { persona, session, requestId, op, target, status, errorClass, message };
}

/** Levels of nesting a detail may have to be shown as JSON: the kernel's have a few. */
const MAX_DETAIL_DEPTH = 64;

/** Whether a parsed JSON value nests no deeper than `max` (walked without recursion). */
function shallow(v: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length) {
    const [x, depth] = stack.pop() as [unknown, number];
    if (x === null || typeof x !== "object") continue;
    if (depth >= max) return false;
    for (const y of Object.values(x)) stack.push([y, depth + 1]);
  }
  return true;
}

/**
 * A record's detail as JSON, or undefined when it is not JSON or nests deeper than the kernel's
 * ever do (a tampered home's): writing that out again (JSON.stringify, every view) would overflow
 * the stack.
 */
export function detailValue(d: string): unknown {
  try {
    const v: unknown = JSON.parse(d);
    return shallow(v, MAX_DETAIL_DEPTH) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** A record's detail column as JSON; text that is not JSON, or nested too deep, as {$text}. */
export function parseDetail(d: string | null | undefined): unknown {
  if (d === null || d === undefined || d === "") return null;
  return detailValue(d) ?? { $text: d };
}

export const iso = (t: number | null) => (t === null ? null : isoTime(t));

export function rowJson(r: TimelineRow): Record<string, unknown> {
  return {
    seq: r.seq,
    outcomeSeq: r.outcomeSeq,
    phase: r.phase,
    start: iso(r.start),
    end: iso(r.end),
    ...requestFields(r),
    tokens: r.tokens,
    traceparent: r.traceparent,
    traceId: traceId(r.traceparent),
    execution: r.execution,
    domain: r.domain,
    kernel: r.kernel,
    detail: parseDetail(r.detail),
  };
}

export const TIMELINE_HEADER = ["seq", "start", "end", "persona", "session", "req", "op", "target", "status", "token", "trace"];

/**
 * A session's open or failed handshake: on the Unix socket the process that connected, from the
 * record's detail (`pid 4608 uid 1000`, or `process unknown` when the kernel could not read it);
 * over gRPC from loopback the local user owning the peer's socket (`uid 1000`, or `user
 * unknown`); undefined for other records. Numbers only: a tampered detail shows as nothing, not as text.
 */
export function processCell(r: TimelineRow): string | undefined {
  if ((r.op !== "session.open" && r.op !== "session.handshake") || r.detail === null) return undefined;
  const d = detailValue(r.detail) as
    | { process?: { pid?: unknown; uid?: unknown } | null; localUser?: { uid?: unknown } | null }
    | undefined;
  if (!d || typeof d !== "object") return undefined;
  if (!("process" in d)) {
    if (!("localUser" in d)) return undefined;
    const u = d.localUser;
    if (u === null) return "user unknown";
    return typeof u?.uid === "number" ? `uid ${u.uid}` : undefined;
  }
  const p = d.process;
  if (p === null) return "process unknown";
  return typeof p?.pid === "number" && typeof p.uid === "number" ? `pid ${p.pid} uid ${p.uid}` : undefined;
}

/** A row for people: ids cut to 8 characters (filters take prefixes), the outcome as STATUS/CLASS. */
export function rowCells(r: TimelineRow): string[] {
  const short = (s: string | null) => (s === null ? "-" : s.slice(0, 8));
  let status = r.status ? `${r.status}${r.errorClass ? `/${r.errorClass}` : ""}` : "-";
  if (r.phase === "intent" && r.outcomeSeq === null) status = "NO OUTCOME";
  return [
    r.outcomeSeq !== null ? `${r.seq}+${r.outcomeSeq}` : String(r.seq),
    iso(r.start) ?? "-",
    iso(r.end) ?? "-",
    r.persona,
    short(r.session),
    r.requestId === null ? "-" : String(r.requestId),
    r.op ?? `(${r.phase})`,
    // A session's open has no target: where it came from is what an investigator reads there.
    r.target ?? processCell(r) ?? "-",
    status,
    r.tokens.length ? r.tokens.map(short).join(",") : "-",
    short(traceId(r.traceparent)),
  ];
}
