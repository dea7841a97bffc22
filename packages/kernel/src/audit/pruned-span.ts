import type { AuditRow } from "../store/types.js";
import type { DetailValue } from "./detail.js";

/** Personas a pass's summary names (the most records first); the rest are counted together. */
export const PRUNED_SPAN_PERSONAS = 32;
/** Distinct personas counted in one pass; records of personas past it count as `otherPersonas` only. */
const MAX_TRACKED = 4096;

/** What one persona had in the pruned records. */
interface PersonaCount {
  records: number;
  /** `intent` records: effects the persona ran (what a flood would most want gone). */
  intents: number;
  /** The newest pruned record of the persona (ms). */
  last: number;
}

/**
 * The summary of what a retention pass pruned, for its `audit.pruned` record: without it a
 * persona that floods the log within its grant pushes its own earlier acts out, and the record
 * says only "records 1..N pruned" — not whose they were, nor that effects were among them. It
 * covers every record pruned since the oldest `audit.pruned` record still kept: an earlier
 * pass's record pruned by this pass has its summary carried in.
 */
export class PrunedSpan {
  private from: number | undefined;
  private to: number | undefined;
  private readonly personas = new Map<string, PersonaCount>();
  private untracked = { records: 0, intents: 0 };

  add(r: Pick<AuditRow, "time" | "persona" | "phase" | "op" | "detail">): void {
    this.count(r.persona, r.time, r.time, 1, r.phase === "intent" ? 1 : 0);
    // An earlier pass's summary pruned now is carried into this one: two passes must not do what
    // one cannot (a flood long enough to prune the record that named it).
    if (r.phase === "kernel" && r.op === "audit.pruned") this.carry(r.detail);
  }

  private count(persona: string | undefined, from: number, last: number, records: number, intents: number): void {
    this.from = this.from === undefined ? from : Math.min(this.from, from);
    this.to = this.to === undefined ? last : Math.max(this.to, last);
    let c = persona === undefined ? undefined : this.personas.get(persona);
    if (persona !== undefined && !c && this.personas.size < MAX_TRACKED) {
      c = { records: 0, intents: 0, last };
      this.personas.set(persona, c);
    }
    if (!c) {
      this.untracked.records += records;
      this.untracked.intents += intents;
      return;
    }
    c.records += records;
    c.intents += intents;
    c.last = Math.max(c.last, last);
  }

  /** Merges an `audit.pruned` record's `span` (ignored when malformed: the record is the kernel's own). */
  private carry(detail: string | null | undefined): void {
    let span: unknown;
    try {
      span = (JSON.parse(detail ?? "{}") as { span?: unknown }).span;
    } catch {
      return;
    }
    if (!isObject(span) || !isNum(span.from) || !isNum(span.to)) return;
    const { from, to } = span;
    const personas = isObject(span.personas) ? span.personas : {};
    for (const [id, c] of Object.entries(personas))
      if (isObject(c) && isNum(c.records) && isNum(c.intents) && isNum(c.last))
        this.count(id, from, c.last, c.records, c.intents);
    const o = span.otherPersonas;
    if (isObject(o) && isNum(o.records) && isNum(o.intents)) this.count(undefined, from, to, o.records, o.intents);
    // The carried span's start and end (also when it named no one).
    this.from = Math.min(this.from ?? from, from);
    this.to = Math.max(this.to ?? to, to);
  }

  /**
   * The personas (and "(others)", those past the tracked ones) whose acts with effects — intent
   * records — were pruned while their newest pruned record was at or after `since`: from every
   * persona counted, not only the ones the detail names.
   */
  recentActs(since: number): string[] {
    const out: string[] = [];
    for (const [id, c] of this.personas) if (c.intents > 0 && c.last >= since) out.push(id);
    if (this.untracked.intents > 0 && (this.to ?? 0) >= since) out.push("(others)");
    return out;
  }

  /** `detail.span` of the pass's `audit.pruned` record; undefined when nothing was read. */
  detail(): { [k: string]: DetailValue } | undefined {
    if (this.from === undefined) return undefined;
    // Which personas are named (the detail's keys are sorted): those with effects first (an intent
    // pruned is what a flood hides), then by record count; so a flood of decoy personas cannot hide one.
    const all = [...this.personas].sort(
      ([a, x], [b, y]) => Number(y.intents > 0) - Number(x.intents > 0) || y.records - x.records || (a < b ? -1 : 1),
    );
    const named = all.slice(0, PRUNED_SPAN_PERSONAS);
    const others = all
      .slice(PRUNED_SPAN_PERSONAS)
      .reduce((o, [, c]) => ({ records: o.records + c.records, intents: o.intents + c.intents }), { ...this.untracked });
    return {
      from: this.from,
      to: this.to ?? this.from,
      personas: Object.fromEntries(named.map(([id, c]) => [id, { ...c }])),
      ...(others.records ? { otherPersonas: others } : {}),
    };
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isNum(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}
