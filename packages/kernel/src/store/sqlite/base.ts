import { closeSync, fdatasyncSync, openSync } from "node:fs";
import type Database from "better-sqlite3";
import { openDatabase } from "./schema.js";

/** A prepared statement and a transaction function, named here so the table modules' types can name them. */
export type Statement = Database.Statement;
export type Transaction<F extends (...args: never[]) => unknown> = Database.Transaction<F>;

/** A row as better-sqlite3 returns it. */
export type Row = Record<string, unknown>;

/** The meta rows of {@link SqliteBase.markEndedUploadNote}: the prefix, and the key just past every such key. */
const ENDED_NOTE = "ended_upload_note:";
const ENDED_NOTE_END = "ended_upload_note;";

/**
 * `column` names `root` or an id under it, as SQL over one index range: '0' follows '/' in
 * byte order, so [root/, root0) is exactly the ids under root. Binds {@link treeArgs}(root).
 */
export const inTreeSql = (column: string): string => `(${column} = ? OR (${column} >= ? AND ${column} < ?))`;

/** The three values {@link inTreeSql} binds for `root`. */
export const treeArgs = (root: string): [string, string, string] => [root, `${root}/`, `${root}0`];

/** {@link inTreeSql}'s arguments for `id` alone, not the ids under it (an empty range beside it). */
export const idArgs = (id: string): [string, string, string] => [id, id, id];

/** A record field's column: the field in snake_case (`requestId` → `request_id`). */
export const columnOf = (field: string): string => field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** `fields` (field → column, {@link columnOf}), for the fields an update may set. */
export const columnMap = (fields: readonly string[]): Readonly<Record<string, string>> =>
  Object.fromEntries(fields.map((f) => [f, columnOf(f)]));

/**
 * The fields of `f` that `columns` names (field → column), with their values as a statement's
 * named parameters (an undefined value binds null).
 */
export function pickColumns(columns: Readonly<Record<string, string>>, f: object): { fields: string[]; values: Row } {
  const fields = Object.keys(f).filter((k) => Object.hasOwn(columns, k));
  return { fields, values: Object.fromEntries(fields.map((k) => [k, (f as Row)[k] ?? null])) };
}

/**
 * A reader of records from rows whose columns are the record's fields in snake_case
 * ({@link columnOf}); a column an older home lacks reads as null. `fields` names
 * every field of `T` (the type checks that none is missing), so a table's mapping is one list.
 */
export function rowReader<T>(fields: { [K in keyof T]-?: true }): (r: Row) => T {
  const cols = Object.keys(fields).map((f) => [f, columnOf(f)] as const);
  return (r) => {
    const o: Row = {};
    for (const [f, c] of cols) o[f] = r[c] ?? null;
    return o as T;
  };
}

/**
 * What each table module extends (store/sqlite.ts stacks them into SqliteStore). TypeScript
 * requires a mixin's base constructor to take `any[]`.
 */
// biome-ignore lint/suspicious/noExplicitAny: the mixin constructor signature TypeScript requires
export type StoreBase = new (...args: any[]) => SqliteBase;

/**
 * A table module's class: its base, plus the store interface it implements. Declared rather
 * than inferred, so that no SQLite type leaks into the store's public type.
 */
// biome-ignore lint/suspicious/noExplicitAny: the mixin constructor signature TypeScript requires
export type WithRows<B extends StoreBase, T> = B & (new (...args: any[]) => T);

/** Stores whose storage failed: held for the life of the process ({@link SqliteBase.failStorage}). */
const FAILED_STORES = new Set<SqliteBase>();

/** The connection and what every table shares: the statement cache, WAL control, meta, transactions. */
export class SqliteBase {
  readonly db: Database.Database;
  readonly #prepared = new Map<string, Statement>();

  constructor(readonly path: string) {
    this.db = openDatabase(path);
  }

  #failed: Error | undefined;

  /** Why the store takes no more changes ({@link failStorage}), if it does not. */
  get storageFailure(): Error | undefined {
    return this.#failed;
  }

  /**
   * The database file could not be made durable (a failed sync: checkpointer.ts): no checkpoint
   * runs again, the audit takes no more records (so no request is answered), and close() leaves
   * the connection as it is, since SQLite's close would checkpoint and drop the WAL.
   */
  failStorage(e: Error): void {
    this.#failed ??= e;
    // Never collected: the addon closes a collected connection, and that close checkpoints.
    FAILED_STORES.add(this);
    if (this.db.open) this.db.pragma("wal_autocheckpoint = 0");
  }

  /** Statements prepared once and reused: preparing costs more than running. For the table modules. */
  prep(sql: string): Statement {
    let st = this.#prepared.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.#prepared.set(sql, st);
    }
    return st;
  }

  /** Pages in the WAL after which a commit checkpoints (0: never on commit; see WalCheckpointer). */
  setAutoCheckpoint(pages: number): void {
    if (this.db.open && !this.#failed) this.db.pragma(`wal_autocheckpoint = ${Math.max(0, Math.floor(pages))}`);
  }

  /** Bytes the WAL file is trimmed to when SQLite starts it over. */
  setWalLimit(bytes: number): void {
    if (this.db.open) this.db.pragma(`journal_size_limit = ${Math.max(0, Math.floor(bytes))}`);
  }

  /** One PASSIVE WAL checkpoint on this connection, between transactions. */
  checkpointNow(): void {
    if (this.db.open && !this.#failed) this.db.pragma("wal_checkpoint(PASSIVE)");
  }

  /**
   * Makes every committed transaction durable now (an fdatasync of the WAL): commits run with
   * synchronous=NORMAL, durable at the next checkpoint. For what must not outlive a rolled-back
   * commit, such as a file-store body the commit stopped naming.
   */
  syncWal(): void {
    if (this.path === ":memory:") return;
    let fd: number;
    try {
      fd = openSync(`${this.path}-wal`, "r");
    } catch {
      return; // no WAL file: every commit is in the database file already
    }
    try {
      fdatasyncSync(fd);
    } catch (e) {
      // A writeback error is reported to one sync only: the next would pass with the WAL's pages lost.
      this.failStorage(e as Error);
      throw e;
    } finally {
      closeSync(fd);
    }
  }

  /** Before a read of a table the audit journal feeds: AuditRows indexes what is journalled first. */
  settleAudit(): void {}

  close(): void {
    if (this.db.open && !this.#failed) this.db.close();
  }

  getMeta(key: string): string | undefined {
    const r = this.prep("SELECT value FROM meta WHERE key = ?").get(key) as Row | undefined;
    return r?.value as string | undefined;
  }

  setMeta(key: string, value: string): void {
    this.prep("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)").run(key, value);
  }

  /**
   * Uploads that ended (committed, aborted, ended on the record) whose notes the file system
   * refused to remove (BlobStore.removeNote): the next start reads such a note as ended, not as a
   * commit that did not complete. Rows of the meta table, `ended_upload_note:<id>`.
   */
  markEndedUploadNote(id: string): void {
    this.setMeta(`${ENDED_NOTE}${id}`, "1");
  }

  unmarkEndedUploadNote(id: string): void {
    this.prep("DELETE FROM meta WHERE key = ?").run(`${ENDED_NOTE}${id}`);
  }

  endedUploadNotes(): string[] {
    const keys = this.prep("SELECT key FROM meta WHERE key > ? AND key < ?")
      .pluck(true)
      .all(ENDED_NOTE, ENDED_NOTE_END) as string[];
    return keys.map((k) => k.slice(ENDED_NOTE.length));
  }

  clearEndedUploadNotes(): void {
    this.prep("DELETE FROM meta WHERE key > ? AND key < ?").run(ENDED_NOTE, ENDED_NOTE_END);
  }

  /** Sets the fields of `f` that `columns` names (field → column) on row `id` of `table`; none: nothing runs. */
  updateColumns(table: string, columns: Readonly<Record<string, string>>, id: string, f: object): void {
    const { fields, values } = pickColumns(columns, f);
    if (!fields.length) return;
    const sql = `UPDATE ${table} SET ${fields.map((k) => `${columns[k]} = @${k}`).join(", ")} WHERE id = @id`;
    this.prep(sql).run({ ...values, id });
  }

  /**
   * One transaction function that runs what it is given: better-sqlite3 builds five wrapper
   * functions per `db.transaction(fn)`, 7 % of the kernel's allocation under load (more GC
   * pauses in the tail). Nesting, commit and rollback are decided per call, as before.
   */
  private txn: ((fn: () => unknown) => unknown) | undefined;

  transaction<T>(fn: () => T): T {
    this.txn ??= this.db.transaction((f: () => unknown) => f());
    const mark = this.#undo.length;
    this.#depth++;
    let done = false;
    try {
      const v = this.txn(fn) as T;
      done = true;
      return v;
    } finally {
      this.#depth--;
      // Rolled back (this savepoint, or the whole transaction): what memory took from it is undone, newest first.
      if (!done) for (let i = this.#undo.length - 1; i >= mark; i--) (this.#undo.pop() as () => void)();
      else if (this.#depth === 0) this.#undo.length = 0;
    }
  }

  /** What undoes memory's part of the open transaction's changes, if it rolls back ({@link onRollback}). */
  readonly #undo: (() => void)[] = [];
  #depth = 0;

  /**
   * Runs `undo` if the transaction open now (one {@link transaction} began) rolls back, so that
   * what memory took from a change it made does not outlast the change; once the outermost one
   * commits it is dropped. False when no transaction is open: the change stands on its own.
   */
  onRollback(undo: () => void): boolean {
    if (this.#depth === 0) return false;
    this.#undo.push(undo);
    return true;
  }

  /** {@link ObjectStore.partOfTransaction}: a SAVEPOINT and its RELEASE are two statements a small write need not make. */
  partOfTransaction<T>(fn: () => T): T {
    return this.db.inTransaction ? fn() : this.transaction(fn);
  }
}
