import { type AuditReader, boundedColumns } from "@kpip/kernel";
import { isoTime } from "../util.js";
import { printable } from "./printable.js";

/** A change the CLI made while no kernel ran, waiting in the home's offline journal. */
export interface JournalChange {
  /** Null when the row's id is not an integer (the table made again by whoever tampered with it). */
  id: number | null;
  time: string | null;
  actor: string | null;
  op: string | null;
  target: string | null;
  message: string | null;
}

/** Changes listed (the rest counted): a tampered journal may hold any number. */
const SHOWN = 16;

/**
 * The offline journal's rows: changes made with the CLI while no kernel ran (a persona removed,
 * a key registered, a root key rotated) that no kernel has moved onto the chain yet — the next
 * start does. A home preserved as evidence is never started, so without this the audit tools
 * showed none of them. Unverified: the journal is a table, outside the chain.
 */
export function pendingJournal(reader: AuditReader): { count: number; changes: JournalChange[] } {
  const db = reader.db;
  if (!db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'offline_journal'").get())
    return { count: 0, changes: [] };
  const count = (db.prepare("SELECT COUNT(*) AS n FROM offline_journal").get() as { n: number }).n;
  if (count === 0) return { count, changes: [] };
  // Each value bounded: a tampered row past MAX_CELL_BYTES reads as null, never into memory.
  const rows = db
    .prepare(`SELECT ${boundedColumns(db, "offline_journal")} FROM offline_journal ORDER BY id LIMIT ?`)
    .all(SHOWN) as Record<string, unknown>[];
  const text = (v: unknown) => (typeof v === "string" ? v : null);
  const changes = rows.map((r) => ({
    // AUTOINCREMENT ids are integers: anything else (text, a real) was put there by hand.
    id: Number.isSafeInteger(r.id) ? (r.id as number) : null,
    time: typeof r.time === "number" && Number.isFinite(r.time) ? isoTime(r.time) : null,
    actor: text(r.actor),
    op: text(r.op),
    target: text(r.target),
    message: text(r.message),
  }));
  return { count, changes };
}

/** The text of the pending changes, for a warning or a note; undefined when there are none. */
export function journalText(p: { count: number; changes: JournalChange[] }): string | undefined {
  if (p.count === 0) return undefined;
  const lines = p.changes.map(
    (c) =>
      `  journal ${c.id ?? "(invalid id: tampered)"} ${c.time ?? "?"} ${c.op ?? "?"} ${c.target ?? "-"} by ${c.actor ?? "?"}: ${c.message ?? ""}`,
  );
  if (p.count > p.changes.length) lines.push(`  … ${p.count - p.changes.length} more`);
  return `${p.count} change${p.count === 1 ? "" : "s"} made with the CLI while no kernel ran ${p.count === 1 ? "is" : "are"} in the home's offline journal, not on the chain (the next kernel start records them; no hash or signature covers them until then):\n${lines.map((l) => printable(l)).join("\n")}`;
}

/** On stderr beside the paging note, as {@link prunedNote}: the changes no record shows yet. */
export function journalNote(reader: AuditReader, json: boolean): void {
  const p = pendingJournal(reader);
  if (p.count === 0) return;
  if (json) process.stderr.write(`${JSON.stringify({ offlineJournal: p })}\n`);
  else process.stderr.write(`${journalText(p)}\n`);
}
