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
 * says only "records 1..N pruned" — not whose they were, nor that effects were among them.
 */
export class PrunedSpan {
  private from: number | undefined;
  private to: number | undefined;
  private readonly personas = new Map<string, PersonaCount>();
  private untracked = { records: 0, intents: 0 };

  add(r: Pick<AuditRow, "time" | "persona" | "phase">): void {
    this.from = this.from === undefined ? r.time : Math.min(this.from, r.time);
    this.to = this.to === undefined ? r.time : Math.max(this.to, r.time);
    const intent = r.phase === "intent" ? 1 : 0;
    let c = this.personas.get(r.persona);
    if (!c && this.personas.size < MAX_TRACKED) {
      c = { records: 0, intents: 0, last: r.time };
      this.personas.set(r.persona, c);
    }
    if (!c) {
      this.untracked.records++;
      this.untracked.intents += intent;
      return;
    }
    c.records++;
    c.intents += intent;
    c.last = Math.max(c.last, r.time);
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
