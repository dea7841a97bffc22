import type Database from "better-sqlite3";

/**
 * The largest value a reader takes from a cell of audit_checkpoints, tokens or revocations. No
 * kernel writes one near it (ids of 32 hex, hashes and keys of 32 bytes, a signature of 64, a
 * token's chain a few KiB): a larger value is tampering with the home's database, read as the
 * `otherwise` placeholder, never into memory (SQLite gives a value's size without reading it), as
 * an audit record past MAX_RECORD_BYTES is (audit/record-size.ts).
 */
export const MAX_CELL_BYTES = 1024 * 1024;

/** `col` in a SELECT list (named `as`): its value (NULL too) when at most `max` bytes, else `otherwise` (SQL). */
export function boundedCell(col: string, max = MAX_CELL_BYTES, otherwise = "NULL", as = col): string {
  return `CASE WHEN octet_length(${col}) > ${max} THEN ${otherwise} ELSE ${col} END AS ${as}`;
}

/**
 * Every column `table` has (an older home may lack some), each bounded (by `bounds`, else
 * MAX_CELL_BYTES and NULL): `SELECT ${boundedColumns(…)} FROM table`.
 */
export function boundedColumns(
  db: Database.Database,
  table: string,
  bounds: Record<string, [max: number, otherwise: string]> = {},
): string {
  const cols = db.pragma(`table_info(${table})`) as { name: string }[];
  return cols
    .map((c) => {
      const [max, otherwise] = bounds[c.name] ?? [MAX_CELL_BYTES, "NULL"];
      return boundedCell(`"${c.name.replace(/"/g, '""')}"`, max, otherwise);
    })
    .join(", ");
}
