/**
 * What a stored object costs in `storage.bytes` (a token's limit, `workspaceStorageBytes`): its
 * body, its path's bytes and {@link OBJECT_ROW_BYTES} for its row (PROTOCOL §12). Counting bodies
 * alone let an empty object cost nothing however long its path: a persona limited to one byte
 * wrote 4,000 empty objects with ~2,000-byte paths, ~19 MB of rows, at a usage of 0 (docs/security.md
 * case 522).
 */

/**
 * The bytes an object's row takes besides its body and its path, charged once per object.
 * Measured (`npm run bench:rows`: SQLite, 4 KiB pages, empty objects committed one by one in
 * random path order, as writes come): 30–40 bytes a row besides a short path with short
 * workspace and owner names, 410–440 with the longest the grammar allows (a 64-byte workspace
 * name, a 255-byte persona id) — the row's other columns, its cell and its share of leaf pages
 * about 70% full and of the B-tree's interior pages. 512 covers that whoever writes and wherever:
 * the charge does not depend on the writer's id, so an overwrite by another persona moves the
 * same figure. Not covered: a page's fill also applies to the path (a 500-byte path takes up to
 * 1,228 bytes a row, 1.2× its charge), and a record past ~1 KB (a path of ~900 bytes or more, or
 * an inline body) spills into an overflow page — 4.7 KB a row for an empty object with a
 * 900–2,030-byte path, up to 3.3× its charge (1.9× at 2,000 bytes). Bounded, not exact: charging a
 * whole page a row would charge a small object eight times as much.
 */
export const OBJECT_ROW_BYTES = 512;

/** An object's charge in `storage.bytes`: its body, its path's UTF-8 bytes, and its row's overhead. */
export function objectCost(path: string, size: number): number {
  return size + Buffer.byteLength(path, "utf8") + OBJECT_ROW_BYTES;
}

/** {@link objectCost} of a row of the `objects` table, in SQL (the recount at start must give the same figures). */
export const OBJECT_COST_SQL = `(size + length(CAST(path AS BLOB)) + ${OBJECT_ROW_BYTES})`;
