import type { TimelineRow } from "./timeline.js";

/**
 * `kpip audit timeline --summary`: the matching rows counted by persona, op, outcome and scope,
 * rarest first — one act hidden among a persona's flood of requests (a read of another
 * workspace among 100,000 writes of its own) is a group of its own at the top.
 */
export interface SummaryGroup {
  persona: string;
  op: string;
  /** STATUS/CLASS as the timeline prints it (NO OUTCOME for an intent without one). */
  outcome: string;
  /** The target up to its first segment (`obj://ws/`), or its scheme alone where that segment is an id. */
  scope: string;
  count: number;
  firstSeq: number;
  lastSeq: number;
  first: number;
  last: number;
}

/** An id as a target's first segment (an op's, a token's): grouping by it would make a group per id. */
const ID_SEGMENT = /^[0-9a-f]{32}$/;

/** The target's scope: `scheme://first-segment/`, or `scheme://*` where the first segment is an id. */
export function scopeOf(target: string | null): string {
  if (target === null) return "-";
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/]*)(\/?)/.exec(target);
  if (!m) return target.slice(0, 64);
  const [, scheme, seg, slash] = m as unknown as [string, string, string, string];
  if (seg === "") return scheme;
  if (ID_SEGMENT.test(seg)) return `${scheme}*`;
  // A segment is at most a target's length; a scope is shown whole, as the target would be.
  return `${scheme}${seg}${slash}`;
}

function outcomeOf(r: TimelineRow): string {
  if (r.phase === "intent" && r.outcomeSeq === null) return "NO OUTCOME";
  return r.status ? `${r.status}${r.errorClass ? `/${r.errorClass}` : ""}` : "-";
}

/**
 * Scopes counted apart for one persona, op and outcome; rows at further scopes are counted in one
 * group of their own ({@link otherScopes}). A persona chooses its targets, refused ones too
 * (`topic://` + 2 KB of its choosing, 100 a second): one group per scope would hold every such
 * target in the investigator's memory (~5 KB a group: an hour of them ~2 GB) and list thousands of
 * groups of one above the act the summary is there to show.
 */
export const MAX_SCOPES = 128;

/** The scope of the group that counts a persona's rows for one op and outcome past {@link MAX_SCOPES} scopes. */
export const otherScopes = `(scopes past the first ${MAX_SCOPES}: list them with --persona and --op)`;

/**
 * Ops counted apart for one persona and outcome; further ops' rows are counted as {@link otherOps}.
 * An unknown op's name is the requester's (refused SEMANTIC, on the record as sent): a group per
 * name would be as unbounded as a group per scope. The kernel's own ops are far fewer.
 */
export const MAX_OPS = 256;

/** The op of the groups counting a persona's rows for one outcome past {@link MAX_OPS} ops. */
export const otherOps = `(ops past the first ${MAX_OPS})`;

/** Counts rows into groups; {@link groups} then gives them rarest first. */
export class Summary {
  private readonly map = new Map<string, SummaryGroup>();
  /** Scopes with a group of their own, per persona, op and outcome. */
  private readonly scopes = new Map<string, number>();
  /** Ops with groups of their own, per persona and outcome. */
  private readonly ops = new Map<string, Set<string>>();
  add(r: TimelineRow): void {
    const persona = r.persona;
    let op = r.op ?? `(${r.phase})`;
    const outcome = outcomeOf(r);
    const who = `${persona}\0${outcome}`;
    const known = this.ops.get(who) ?? new Set<string>();
    if (known.size === 0) this.ops.set(who, known);
    if (!known.has(op)) {
      if (known.size >= MAX_OPS) op = otherOps;
      else known.add(op);
    }
    let scope = scopeOf(r.target);
    const kind = `${persona}\0${op}\0${outcome}`;
    let key = `${kind}\0${scope}`;
    if (!this.map.has(key)) {
      const n = this.scopes.get(kind) ?? 0;
      if (n >= MAX_SCOPES) {
        scope = otherScopes;
        key = `${kind}\0\0other`;
      } else this.scopes.set(kind, n + 1);
    }
    const g = this.map.get(key);
    if (!g) {
      this.map.set(key, {
        persona,
        op,
        outcome,
        scope,
        count: 1,
        firstSeq: r.seq,
        lastSeq: r.seq,
        first: r.start,
        last: r.start,
      });
      return;
    }
    g.count++;
    // Rows come in order of their first record, but an intent's row is handed over at its outcome.
    if (r.seq < g.firstSeq) {
      g.firstSeq = r.seq;
      g.first = r.start;
    }
    if (r.seq > g.lastSeq) {
      g.lastSeq = r.seq;
      g.last = r.start;
    }
  }
  /** Rarest first; equal counts in the order they first appear. */
  groups(): SummaryGroup[] {
    return [...this.map.values()].sort((a, b) => a.count - b.count || a.firstSeq - b.firstSeq);
  }
}
