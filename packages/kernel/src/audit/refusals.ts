import { FIRST_SEGMENT, type TreeRoots } from "../resources/lineage.js";
import { drain, RateBuckets } from "./rate-buckets.js";

/**
 * Data items of their intents a persona tree's requests may have the kernel decode, per second
 * (bursts 5×), counted for intents of {@link OWED_INTENT_BYTES} or more. An intent is decoded
 * whole before anything can look at it (its op and target decide whether it is allowed), up to
 * 100,000 items (~30–140 ms of the kernel's thread): a persona sending such intents, refused or
 * allowed, held the thread for every other session. Honest large intents are bytes (a write's
 * data: one item) or hold far fewer items than this a second.
 */
export const DECODED_ITEMS_PER_SECOND = 100_000;
/**
 * A refused request's items count this many times (its decoding bought nothing): a tree whose
 * large intents are all refused decodes 20,000 items a second (case 558's allowance).
 */
export const REFUSED_DECODE_WEIGHT = 5;
/** Intents smaller than this are decoded whatever the tree owes, and not counted: they cannot hold many items. */
export const OWED_INTENT_BYTES = 4096;

/** How fast refusals are written to the audit log, per session and per persona. */
export interface RefusalLimits {
  /** Refusal records per second one session may cause; bursts up to 5× this. */
  sessionRate: number;
  /** Refusal records per second one persona (with every persona under it) may cause over all its sessions; bursts up to 5× this. */
  personaRate: number;
  /** Refusals suppressed on one session after which the session is ended (0 = never). */
  floodMax: number;
  /** Largest intent whose bytes a refusal record keeps (larger: hash, op and target only). */
  intentMaxBytes: number;
}

/** Refusals not written one by one, to be written as one aggregate record. */
export interface Suppressed {
  session: string;
  persona: string;
  count: number;
  /** Count by error class. */
  classes: Record<string, number>;
  /** Count by op (the first {@link SUPPRESSED_OPS} names; the rest in `otherOps`): what was attempted. */
  ops: Record<string, number>;
  otherOps: number;
  /** The first {@link SUPPRESSED_TARGETS} distinct targets refused (clipped); refusals on others in `otherTargets`. */
  targets: string[];
  otherTargets: number;
  since: number;
}

/** Op names an aggregate record counts one by one (a session's refusals over the rate, per tick). */
export const SUPPRESSED_OPS = 32;
/** Distinct targets an aggregate record names, each clipped to {@link SUPPRESSED_TARGET_CHARS}. */
export const SUPPRESSED_TARGETS = 16;
export const SUPPRESSED_TARGET_CHARS = 256;

/**
 * Refusals cost the refused nothing and the kernel a durable record each: without a rate, a
 * persona with no capability at all can fill the disk. Within the rate every refusal gets its
 * record; beyond it a refusal is counted, and the counts are written as one aggregate record
 * per session (`audit.suppressed`) at the next tick — never silence. A session that keeps
 * flooding past `floodMax` suppressed refusals is ended.
 */
export class RefusalLimiter {
  private readonly sessions: RateBuckets;
  private readonly personas: RateBuckets;
  private readonly pending = new Map<string, Suppressed>();
  private readonly totals = new Map<string, number>();

  get intentMaxBytes(): number {
    return this.limits.intentMaxBytes;
  }

  constructor(
    private readonly limits: RefusalLimits,
    private readonly clock: () => number = Date.now,
    /** The top of each persona's tree (the persona rate counts it). */
    private readonly roots: TreeRoots = FIRST_SEGMENT,
  ) {
    this.sessions = new RateBuckets(() => this.limits.sessionRate);
    this.personas = new RateBuckets(() => this.limits.personaRate);
  }

  /** True: write this refusal's record. False: it was counted for the aggregate record. */
  admit(session: string, persona: string, errorClass: string, op: string | null = null, target: string | null = null): boolean {
    const now = this.clock();
    const s = this.sessions.take(session, now);
    // A persona's rate covers its whole tree: its agents and sub-personas refuse on its budget.
    const p = this.personas.take(this.roots.of(persona), now);
    if (s.tokens >= 1 && p.tokens >= 1) {
      s.tokens--;
      p.tokens--;
      return true;
    }
    let agg = this.pending.get(session);
    if (!agg) {
      agg = { session, persona, count: 0, classes: {}, ops: {}, otherOps: 0, targets: [], otherTargets: 0, since: now };
      this.pending.set(session, agg);
    }
    agg.count++;
    agg.classes[errorClass] = (Object.hasOwn(agg.classes, errorClass) ? (agg.classes[errorClass] as number) : 0) + 1;
    // What was tried, not only how often: probing hidden behind a flood of decoy refusals still
    // shows its ops (a bounded tally) and the first targets (a persona can fill those with decoys).
    const name = op ?? "-";
    if (Object.hasOwn(agg.ops, name)) agg.ops[name] = (agg.ops[name] as number) + 1;
    else if (Object.keys(agg.ops).length < SUPPRESSED_OPS) agg.ops[name] = 1;
    else agg.otherOps++;
    if (target !== null) {
      const t = target.length > SUPPRESSED_TARGET_CHARS ? `${target.slice(0, SUPPRESSED_TARGET_CHARS)}…` : target;
      if (!agg.targets.includes(t)) {
        if (agg.targets.length < SUPPRESSED_TARGETS) agg.targets.push(t);
        else agg.otherTargets++;
      }
    }
    this.totals.set(session, (this.totals.get(session) ?? 0) + 1);
    return false;
  }

  /** Whether a session's suppressed refusals passed the flood bound (it should be ended). */
  flooding(session: string): boolean {
    return this.limits.floodMax > 0 && (this.totals.get(session) ?? 0) >= this.limits.floodMax;
  }

  /** Items decoded for large intents, by persona tree (see {@link DECODED_ITEMS_PER_SECOND}). */
  private readonly decoded = new RateBuckets(() => DECODED_ITEMS_PER_SECOND);

  /** A request's intent cost the kernel `items` to decode: charged to its persona's tree (down to a burst below empty). */
  decodedItems(persona: string, items: number): void {
    drain(this.decoded.take(this.roots.of(persona), this.clock()), items, DECODED_ITEMS_PER_SECOND);
  }

  /** Whether `persona`'s tree had more decoded than its allowance lately: its large intents wait. */
  owesDecoding(persona: string): boolean {
    return (this.decoded.peek(this.roots.of(persona), this.clock())?.tokens ?? 0) < 0;
  }

  /** The counts to write now (one per session), forgotten once taken. */
  take(): Suppressed[] {
    const out = [...this.pending.values()];
    this.pending.clear();
    return out;
  }

  /** A session ended: its bucket and flood count go (its pending count stays until taken). */
  forget(session: string): void {
    this.sessions.delete(session);
    this.totals.delete(session);
  }
}

/** The aggregate record's message. */
export function suppressedMessage(s: Suppressed): string {
  const classes = Object.entries(s.classes)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return `${s.count} refusals over the audit refusal rate, recorded as this one record (${classes}) since ${new Date(s.since).toISOString()}`;
}
