import type Database from "better-sqlite3";
import { AuditJournal, unindexedBatches } from "../audit-journal.js";
import type { AuditAppend } from "./audit-append.js";
import type { AuditReads } from "./audit-read.js";

/**
 * Adds to `db`, in one transaction, the batches of the audit journal at `path` past the
 * database's newest record, checked to continue its chain (throws AuditJournalError when they do
 * not); answers the records added. For a home of a kpip before segment files: what the kernel
 * does at its first start before moving the table to segments, and the audit reader on its
 * private copy of such a home.
 */
export function indexJournalFile(
  db: Database.Database,
  path: string,
  append: AuditAppend,
  reads: Pick<AuditReads, "head" | "hashAt">,
): number {
  const seq = reads.head();
  const hash = seq === undefined ? undefined : reads.hashAt(seq);
  const batches = unindexedBatches(AuditJournal.read(path), seq === undefined || !hash ? undefined : { seq, hash });
  if (batches.length === 0) return 0;
  let records = 0;
  db.transaction(() => {
    for (const b of batches) {
      append(b.rows, b.dedupe, b.journalUpTo, b.checkpoints);
      records += b.rows.length;
    }
  })();
  return records;
}
