import type { AuditCheckpoint, AuditReader, VerifyResult } from "@kpip/kernel";
import { isoTime } from "../util.js";
import { journalText, pendingJournal } from "./journal-note.js";
import { printable } from "./printable.js";

/** What `audit verify` proved, beyond ok/broken: the head, the checkpoints, the anchors, the unsigned tail. */
export interface VerifyReport extends VerifyResult {
  head: { seq: number; hash: string; time: string } | null;
  /** Where the checkpoints' key came from: the home's kernel.key, or the checkpoints themselves. */
  keySource: "kernel.key" | "checkpoints";
  checkpointSeqs: number[];
  lastCheckpoint: { seq: number; time: string } | null;
  /** Records after the last signed checkpoint: appended, but no signature covers them yet. */
  unsignedTail: { from: number; to: number; records: number; since: string | null } | null;
  /** The kernel's `audit.pruned` record that accounts for a pruned start, when one does. */
  prunedBy?: { seq: number; through: number; span?: PrunedSpanView };
  /** Anchors checked (null: no anchor file given). */
  anchors: number | null;
  anchorsPruned?: number;
  warnings: string[];
}

/** What the `audit.pruned` record says the pruned records were (its `detail.span`, docs/audit.md). */
export interface PrunedSpanView {
  from?: number;
  to?: number;
  personas?: Record<string, { records?: number; intents?: number; last?: number }>;
  otherPersonas?: { records?: number; intents?: number };
}

const NO_ANCHORS =
  "NO ANCHORS CHECKED: this proves only that the log agrees with itself. Whoever holds this home's kernel.key can cut its tail, or rewrite and re-sign records, and it still passes. Check against the anchor file kept outside the home (kpip audit verify --anchors FILE; the kernel writes it with --audit-anchor-file).";

/**
 * Who pruned a log that starts after record 1: the newest `audit.pruned` record of the kernel
 * (its retention writes one after each pass) must reach the log's start. Without one, or with one
 * short of it, the records were removed by someone with the home (the retained point moved to a
 * signed checkpoint, which the chain alone accepts) — or by a pass a kill cut short before its
 * record, or a kpip before these records: a warning, not a failure. Read newest first: the last
 * pass is within a pruning interval of the head.
 */
function prunedByWhom(
  reader: AuditReader,
  through: number,
  retain: number | undefined,
): { by?: VerifyReport["prunedBy"]; warning?: string } {
  let found: { seq: number; through: number; span?: PrunedSpanView } | undefined;
  for (const rec of reader.records({ newest: true })) {
    if (rec.seq <= through) break;
    if (rec.phase !== "kernel" || rec.op !== "audit.pruned") continue;
    let d: { through?: unknown; span?: unknown } = {};
    try {
      d = JSON.parse(rec.detail ?? "{}") as typeof d;
    } catch {
      // a detail that is not JSON names nothing
    }
    const span = typeof d.span === "object" && d.span !== null && !Array.isArray(d.span) ? (d.span as PrunedSpanView) : undefined;
    found = { seq: rec.seq, through: typeof d.through === "number" ? d.through : 0, ...(span ? { span } : {}) };
    break;
  }
  if (found && found.through >= through) return { by: found };
  const setting =
    retain === undefined
      ? ""
      : retain === 0
        ? "; this home's configuration keeps every record (auditRetainRecords 0)"
        : `; this home's auditRetainRecords is ${retain}`;
  const why = found
    ? `records ${found.through + 1}..${through} are gone past the kernel's last audit.pruned record (${found.seq}: through ${found.through})`
    : `records 1..${through} are not in this log, and no audit.pruned record of the kernel says it pruned them`;
  return {
    warning: `${why}${setting}: removed by someone with the home (the log's start moved to a signed checkpoint, which the chain alone accepts), unless a kill cut a retention pass short before its record, or a kpip before these records pruned them`,
  };
}

export function report(
  reader: AuditReader,
  r: VerifyResult & { anchors?: number; anchorsPruned?: number },
  keySource: VerifyReport["keySource"],
  anchorsGiven: boolean,
  retain?: number,
): VerifyReport {
  // Times are in the records' bytes: the head and the first unsigned record are decoded.
  const headSeq = reader.headSeq();
  const last = headSeq === undefined ? undefined : reader.record(headSeq);
  const cps: AuditCheckpoint[] = reader.checkpoints();
  const lastCp = cps.at(-1);
  const head = last ? { seq: last.seq, hash: Buffer.from(last.hash).toString("hex"), time: isoTime(last.time) } : null;
  let unsignedTail: VerifyReport["unsignedTail"] = null;
  if (last && (!lastCp || lastCp.seq < last.seq)) {
    const from = (lastCp?.seq ?? (reader.firstAuditSeq() ?? 1) - 1) + 1;
    const first = reader.scanAudit(from, 1)[0];
    unsignedTail = { from, to: last.seq, records: last.seq - from + 1, since: first ? isoTime(first.time) : null };
  }
  const warnings: string[] = [];
  if (!anchorsGiven) warnings.push(NO_ANCHORS);
  else if (r.ok && !r.anchors) warnings.push(`the anchor file holds no anchors: nothing was checked against it. ${NO_ANCHORS}`);
  if (keySource === "checkpoints")
    warnings.push("no kernel.key in this home: checkpoints were checked against the key they carry, not a trusted one");
  let prunedBy: VerifyReport["prunedBy"];
  if (r.ok && r.prunedThrough !== undefined) {
    const p = prunedByWhom(reader, r.prunedThrough, retain);
    prunedBy = p.by;
    if (p.warning) warnings.push(p.warning);
  }
  const pending = journalText(pendingJournal(reader));
  if (pending) warnings.push(pending);
  if (unsignedTail)
    warnings.push(
      `records ${unsignedTail.from}..${unsignedTail.to} (${unsignedTail.records}) come after the last signed checkpoint: no signature covers them, and a cut there leaves no trace without anchors`,
    );
  return {
    ...r,
    head,
    keySource,
    checkpointSeqs: cps.map((c) => c.seq),
    lastCheckpoint: lastCp ? { seq: lastCp.seq, time: isoTime(lastCp.time) } : null,
    unsignedTail,
    ...(prunedBy ? { prunedBy } : {}),
    anchors: anchorsGiven ? (r.anchors ?? 0) : null,
    ...(r.anchorsPruned ? { anchorsPruned: r.anchorsPruned } : {}),
    warnings,
  };
}

/** Positions for people: all of them when few, else the first and last few. */
function positions(seqs: number[]): string {
  if (seqs.length === 0) return "none";
  if (seqs.length <= 12) return seqs.join(", ");
  return `${seqs.slice(0, 5).join(", ")}, … ${seqs.length - 10} more …, ${seqs.slice(-5).join(", ")}`;
}

export function reportText(v: VerifyReport): string {
  const lines: string[] = [];
  if (v.ok) {
    const p =
      v.prunedThrough !== undefined
        ? ` (records 1..${v.prunedThrough} pruned${v.prunedBy ? ` by retention, audit.pruned record ${v.prunedBy.seq}` : " by whom: see the warning"}; the log starts from the signed checkpoint at ${v.prunedThrough})`
        : "";
    const a = v.anchors !== null ? `, ${v.anchors} anchors matched` : "";
    lines.push(`audit log OK: ${v.records} records${p}, ${v.checkpoints} signed checkpoints verified${a}`);
  } else lines.push(`audit log BROKEN at record ${v.firstBad?.seq}: ${v.firstBad?.reason}`);
  const acts = prunedActs(v.prunedBy?.span);
  if (acts) lines.push(`pruned       ${acts}`);
  if (v.head) lines.push(`head         record ${v.head.seq} at ${v.head.time}, hash ${v.head.hash}`);
  lines.push(
    `checkpoints  at ${positions(v.checkpointSeqs)} (signatures checked with the key from ${v.keySource === "kernel.key" ? "the home's kernel.key" : "the checkpoints themselves"})`,
  );
  if (v.unsignedTail)
    lines.push(
      `unsigned     records ${v.unsignedTail.from}..${v.unsignedTail.to} (${v.unsignedTail.records}, since ${v.unsignedTail.since}) after the last checkpoint`,
    );
  else if (v.head) lines.push("unsigned     none: the head is a signed checkpoint");
  if (v.anchors !== null)
    lines.push(`anchors      ${v.anchors} checked${v.anchorsPruned ? ` (${v.anchorsPruned} name pruned records)` : ""}`);
  for (const w of v.warnings) lines.push(`WARNING: ${w}`);
  return `${lines.join("\n")}\n`;
}

/**
 * The retention pass's summary of what it pruned, for people: its time range and the personas whose
 * acts with effects (intents) went — what a persona flooding its own act out of the record hides.
 */
function prunedActs(span: PrunedSpanView | undefined): string | undefined {
  if (span === undefined) return undefined;
  const when =
    typeof span.from === "number" && typeof span.to === "number"
      ? `records from ${isoTime(span.from)} to ${isoTime(span.to)}`
      : "records";
  const named = Object.entries(span.personas ?? {})
    .filter(([, c]) => typeof c?.intents === "number" && c.intents > 0)
    .map(([id, c]) => `${printable(id)} ${c.intents}`);
  const others = span.otherPersonas?.intents;
  if (typeof others === "number" && others > 0) named.push(`others ${others}`);
  return `${when}; acts with effects among them: ${named.length ? named.join(", ") : "none"} (audit.pruned's span; --json has it)`;
}
