import { generateKeyPairSync } from "node:crypto";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { type AuditEntry, AuditLog } from "../src/audit/log.js";
import { SqliteStore } from "../src/store/sqlite.js";

/**
 * A fresh audit file at `path` holding `n` records, `record(i)` for i = 1..n, appended the way a
 * busy kernel does (batched, awaited every 5000). For the verify tests and `bench/ab/verify`.
 */
export async function fillAuditFile(
  path: string,
  n: number,
  record: (i: number) => AuditEntry,
  options: { batchMax: number; checkpointEvery: number },
  kernel = "kv",
): Promise<void> {
  const store = new SqliteStore(path);
  const log = new AuditLog(store, kernel, generateKeyPairSync("ed25519").privateKey, options);
  try {
    let last: Promise<void> = Promise.resolve();
    for (let i = 1; i <= n; i++) {
      last = log.append(record(i));
      if (i % 5000 === 0) await last;
    }
    await last;
  } finally {
    log.close();
    store.close();
  }
}

/** A copy of the audit file `source` in `dir`, named after `name`, with `sql` applied. */
export function tamperedCopy(source: string, dir: string, name: string, sql: string): string {
  const p = join(dir, `${name.replace(/\W+/g, "-")}.db`);
  copyFileSync(source, p);
  const db = new Database(p);
  try {
    db.exec(sql);
  } finally {
    db.close();
  }
  return p;
}
