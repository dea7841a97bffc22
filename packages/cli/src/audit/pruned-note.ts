import type { AuditReader } from "@kpip/kernel";

/**
 * A log that starts after record 1 (retention pruned its start, or someone cut it): a query or
 * timeline over it answers only from its first record on, and an investigator asking "what did
 * this persona do before T?" must not read an empty answer as "nothing". Said on stderr, beside
 * the paging note; one batch read.
 */
export function prunedNote(reader: AuditReader, json: boolean): void {
  let first: { seq: number; time: number } | undefined;
  for (const r of reader.records()) {
    first = { seq: r.seq, time: r.time };
    break;
  }
  if (!first || first.seq <= 1) return;
  const through = first.seq - 1;
  const since = new Date(first.time).toISOString();
  if (json) process.stderr.write(`${JSON.stringify({ pruned: { through, first: first.seq, firstTime: since } })}\n`);
  else
    process.stderr.write(
      `records 1..${through} are not in this log (pruned; kpip audit verify says by whom): nothing before record ${first.seq} (${since}) can be shown\n`,
    );
}
