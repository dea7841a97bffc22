import type Database from "better-sqlite3";
import { TOKENS_VIEWERS_GONE } from "../store/sqlite/schema.js";

/** Most schema objects named in a refusal: the rest are counted. */
const NAMED = 8;

/**
 * What in a home's schema runs SQL a kernel never wrote when the audit tools read or index it:
 * a view (one named as a table the tools read — audit_batches, tokens — is read in its place,
 * and a recursive one never ends), a trigger other than the kernel's own (it runs when the tools
 * index a stopped kernel's tail into their private copy), a virtual table, a generated column
 * (computed on every read: zeroblob(1e9) a row), an index on an expression, a CHECK constraint,
 * and a DEFAULT or partial index on a table the tools write into their copy. A kernel makes
 * none of them, so their presence says the evidence was tampered with; better-sqlite3 offers no
 * way to interrupt a statement, so they are refused before any other statement runs. Reading
 * sqlite_master and the table_xinfo/index_xinfo pragmas runs nothing of the schema.
 */
export function foreignSchema(db: Database.Database): string[] {
  const found: string[] = [];
  const objects = db
    .prepare("SELECT type, name, tbl_name, sql FROM main.sqlite_master WHERE type IN ('view', 'trigger', 'table', 'index')")
    .all() as {
    type: string;
    name: string;
    tbl_name: string;
    sql: string | null;
  }[];
  for (const o of objects) {
    if (o.type === "view") found.push(`view ${o.name}`);
    else if (o.type === "trigger" && o.sql !== TOKENS_VIEWERS_GONE) found.push(`trigger ${o.name} on ${o.tbl_name}`);
    else if (o.type === "table" && o.sql !== null && VIRTUAL.test(o.sql)) found.push(`virtual table ${o.name}`);
    else if (o.type === "table" && o.sql !== null && /\bCHECK\b/i.test(o.sql)) found.push(`check constraint on ${o.name}`);
    else if (o.type === "table" && o.sql !== null && WRITTEN.has(o.name) && /\bDEFAULT\b/i.test(o.sql))
      found.push(`default value on ${o.name}`);
    else if (o.type === "index" && o.sql !== null && WRITTEN.has(o.tbl_name) && /\bWHERE\b/i.test(o.sql))
      found.push(`partial index ${o.name} on ${o.tbl_name}`);
  }
  // A virtual table's module would be connected to list its columns: named already, it is refused as it is.
  if (found.some((f) => f.startsWith("virtual table"))) return found;
  // One statement each, not one a table: a schema of many tables costs a few times SQLite's own parse of it.
  // Only a table whose text holds "as" can declare a generated column (`AS (…)`).
  const generated = db
    .prepare(
      "SELECT m.name AS t, c.name AS c FROM main.sqlite_master m, pragma_table_xinfo(m.name) c " +
        "WHERE m.type = 'table' AND m.sql LIKE '%as%' AND c.hidden IN (2, 3)",
    )
    .all() as { t: string; c: string }[];
  for (const g of generated) found.push(`generated column ${g.t}.${g.c}`);
  // An index on an expression names a key column -2; a kernel's indexes name columns only.
  const expressions = db
    .prepare(
      "SELECT DISTINCT m.name FROM main.sqlite_master m, pragma_index_xinfo(m.name) k WHERE m.type = 'index' AND k.cid = -2",
    )
    .pluck(true)
    .all() as string[];
  for (const name of expressions) found.push(`index ${name} on an expression`);
  return found;
}

const VIRTUAL = /^\s*CREATE\s+VIRTUAL\b/i;

/**
 * The tables a reader writes into its private copy (reader.ts: a stopped kernel's journalled or
 * segment tail): a CHECK, a DEFAULT or a partial index's WHERE there is an expression each
 * insert evaluates, and one expression can hold thousands of terms (a gigabyte string each).
 */
const WRITTEN = new Set(["audit", "audit_batches", "audit_checkpoints"]);

/** The refusal's text: what was found, the first few named. */
export function foreignSchemaText(found: readonly string[]): string {
  const named = found.slice(0, NAMED).join(", ");
  const more = found.length > NAMED ? ` and ${found.length - NAMED} more` : "";
  return `its schema holds what no kpip kernel makes — ${named}${more}: the evidence was tampered with, and the audit tools run none of its SQL (inspect it with sqlite3 on a copy)`;
}
