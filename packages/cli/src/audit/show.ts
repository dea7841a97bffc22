import type { AuditReader, AuditRecord } from "@kpip/kernel";
import { type CborValue, decodeIntent, type Intent } from "@kpip/protocol";
import { UsageError } from "../util.js";
import { recordTokenIds, traceId } from "./filters.js";
import { printable } from "./printable.js";
import { iso, parseDetail, requestFields } from "./timeline.js";

/** A record, the one paired with it (an intent's outcome, an outcome's intent) and its decoded intent. */
export interface Shown {
  record: AuditRecord;
  intentRecord: AuditRecord | undefined;
  outcomeRecord: AuditRecord | undefined;
  intent: Intent | undefined;
  /** Why there is no decoded intent (not kept, or not decodable). */
  intentNote: string | undefined;
  intentBytes: Uint8Array | undefined;
}

/** The nearest record of `phase` after (outcome) or before (intent) `r` with its kernel, session, request id and intent hash. */
function pair(reader: AuditReader, r: AuditRecord, phase: "intent" | "outcome"): AuditRecord | undefined {
  const after = phase === "outcome";
  // The fields are in the records' bytes only: read outward from `r`.
  const same = (a: Uint8Array | null, b: Uint8Array | null) => (a === null || b === null ? a === b : Buffer.from(a).equals(b));
  for (const c of reader.records(after ? { from: r.seq + 1 } : { from: r.seq, newest: true })) {
    if (
      c.phase === phase &&
      c.kernel === r.kernel &&
      c.session === r.session &&
      c.requestId === r.requestId &&
      same(c.intentHash, r.intentHash)
    )
      return c;
  }
  return undefined;
}

export function show(reader: AuditReader, seq: number): Shown | undefined {
  const record = reader.record(seq);
  if (!record) return undefined;
  const intentRecord = record.phase === "outcome" ? pair(reader, record, "intent") : record;
  const outcomeRecord = record.phase === "intent" ? pair(reader, record, "outcome") : record;
  const bytes = intentRecord?.intent ?? undefined;
  let intent: Intent | undefined;
  let intentNote: string | undefined;
  if (!bytes) {
    intentNote = record.intentHash
      ? "the record keeps only the intent's hash (the bytes were over the kernel's auditIntentMaxBytes, or it was a refusal over its limit)"
      : "this record has no intent (not a request)";
  } else {
    try {
      intent = decodeIntent(bytes);
    } catch (e) {
      intentNote = `the stored intent does not decode: ${(e as Error).message}`;
    }
  }
  return { record, intentRecord, outcomeRecord, intent, intentNote, intentBytes: bytes ?? undefined };
}

/** Bytes for people and for JSON: the text when it is printable UTF-8, else hex. */
export function bytesView(b: Uint8Array): { $text: string } | { $hex: string } {
  const s = Buffer.from(b).toString("utf8");
  if (Buffer.from(s, "utf8").equals(Buffer.from(b)) && !/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(s))
    return { $text: s };
  return { $hex: Buffer.from(b).toString("hex") };
}

/**
 * A CBOR value as JSON, byte strings as {$text} or {$hex}, big integers as {$int}. A map key of
 * the record's that starts with "$" gets one more ("$hex" is written "$$hex"): a persona's map
 * `{"$hex": …}` must not pass for bytes, nor hide the map's other keys.
 */
export function valueJson(v: CborValue | undefined): unknown {
  if (v === undefined) return null;
  if (v instanceof Uint8Array) return bytesView(v);
  if (typeof v === "bigint") return { $int: v.toString() };
  if (Array.isArray(v)) return v.map(valueJson);
  if (v !== null && typeof v === "object")
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k.startsWith("$") ? `$${k}` : k, valueJson(x)]));
  return v;
}

/** The one tag of a value valueJson made for bytes or a big integer, or undefined for a map of the record's. */
function tagOf(v: object): "$text" | "$hex" | "$int" | undefined {
  const keys = Object.keys(v);
  const k = keys[0];
  return keys.length === 1 && (k === "$text" || k === "$hex" || k === "$int") ? k : undefined;
}

/** The byte string at a dotted path in the intent (`args.data`), for --body. */
export function bodyAt(intent: Intent, path: string): Uint8Array {
  let v: unknown = intent;
  for (const k of path.split(".")) {
    if (v === null || typeof v !== "object" || v instanceof Uint8Array || !Object.hasOwn(v, k)) {
      throw new UsageError(
        `--body ${path}: the intent has no ${k} there (keys: ${v && typeof v === "object" ? Object.keys(v).join(", ") : "none"})`,
      );
    }
    v = (v as Record<string, unknown>)[k];
  }
  if (v instanceof Uint8Array) return v;
  if (typeof v === "string") return Buffer.from(v, "utf8");
  throw new UsageError(`--body ${path} is not a byte or text value`);
}

function recordJson(r: AuditRecord | undefined): Record<string, unknown> | null {
  if (!r) return null;
  return {
    seq: r.seq,
    time: iso(r.time),
    phase: r.phase,
    kernel: r.kernel,
    ...requestFields(r),
    durationUs: r.durationUs,
    tokens: recordTokenIds(r.phase, r.caps),
    caps: r.caps,
    traceparent: r.traceparent,
    traceId: traceId(r.traceparent),
    execution: r.execution,
    domain: r.domain,
    intentHash: r.intentHash ? Buffer.from(r.intentHash).toString("hex") : null,
    hash: Buffer.from(r.hash).toString("hex"),
    detail: parseDetail(r.detail),
  };
}

export function shownJson(s: Shown): Record<string, unknown> {
  return {
    record: recordJson(s.record),
    intentRecord: s.intentRecord && s.intentRecord !== s.record ? recordJson(s.intentRecord) : null,
    outcomeRecord: s.outcomeRecord && s.outcomeRecord !== s.record ? recordJson(s.outcomeRecord) : null,
    intent: s.intent
      ? {
          op: s.intent.op,
          target: s.intent.target,
          args: valueJson(s.intent.args),
          ...(s.intent.constraints ? { constraints: valueJson(s.intent.constraints as CborValue) } : {}),
        }
      : null,
    intentNote: s.intentNote ?? null,
    intentBytes: s.intentBytes ? s.intentBytes.length : null,
  };
}

/** A value for people: text as JSON strings, bytes as text or hex (long hex cut at 256 bytes: --raw has all). */
function render(v: unknown, indent: string): string {
  if (v === null || v === undefined) return "null";
  const tag = typeof v === "object" && !Array.isArray(v) ? tagOf(v) : undefined;
  if (tag === "$text") return printable(JSON.stringify((v as { $text: string }).$text));
  if (tag === "$hex") {
    const h = (v as { $hex: string }).$hex;
    return `<${h.length / 2} bytes hex ${h.length > 512 ? `${h.slice(0, 512)}… (--raw for all)` : h}>`;
  }
  if (Array.isArray(v)) return v.length ? v.map((x) => `\n${indent}- ${render(x, `${indent}  `)}`).join("") : "[]";
  if (typeof v === "object") {
    const keys = Object.keys(v);
    // A key valueJson gave one more "$" is shown as the record has it.
    const shown = (k: string) => printable(k.startsWith("$$") ? k.slice(1) : k);
    return keys.length
      ? keys.map((k) => `\n${indent}${shown(k)}: ${render((v as Record<string, unknown>)[k], `${indent}  `)}`).join("")
      : "{}";
  }
  return printable(JSON.stringify(v));
}

function recordLines(title: string, r: Record<string, unknown> | null): string[] {
  if (!r) return [];
  const out = [`${title} (record ${r.seq}, ${r.phase}, ${r.time})`];
  for (const k of [
    "persona",
    "session",
    "requestId",
    "op",
    "target",
    "status",
    "errorClass",
    "message",
    "durationUs",
    "caps",
    "traceparent",
    "execution",
    "domain",
    "intentHash",
    "hash",
  ]) {
    if (r[k] !== null && r[k] !== undefined) out.push(`  ${k.padEnd(12)} ${r[k]}`);
  }
  if (r.detail !== null) out.push(`  ${"detail".padEnd(12)} ${JSON.stringify(r.detail)}`);
  return out.map((t) => printable(t));
}

export function shownText(s: Shown): string {
  const j = shownJson(s);
  const lines = [...recordLines("record", j.record as Record<string, unknown>)];
  if (j.intentRecord) lines.push(...recordLines("its intent", j.intentRecord as Record<string, unknown>));
  if (j.outcomeRecord) lines.push(...recordLines("its outcome", j.outcomeRecord as Record<string, unknown>));
  if (s.record.phase === "intent" && !s.outcomeRecord)
    lines.push("its outcome: none recorded (the kernel stopped before the op ended?)");
  if (j.intent) lines.push(`intent (${j.intentBytes} bytes of canonical CBOR):${render(j.intent, "  ")}`);
  // Why it does not decode quotes the persona's bytes (a target's bidi override, a C1 control).
  else lines.push(`intent: ${printable(s.intentNote ?? "")}`);
  return `${lines.join("\n")}\n`;
}
