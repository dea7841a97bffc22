import { appendFileSync, type FSWatcher, statSync, watch } from "node:fs";
import type { OfflineEntry, PersonaRecord, PersonaStore } from "../types.js";
import { inTreeSql, type Row, type Statement, type StoreBase, treeArgs, type WithRows } from "./base.js";

/** What the offline journal records of a change (its id and time are the store's). */
export type JournalEntry = Omit<OfflineEntry, "id" | "time">;

/** Administrative changes made on the home database without the kernel, journalled for the audit chain. */
export interface JournalStore {
  withJournal<T>(entry: JournalEntry | ((result: T) => JournalEntry), change: () => T): T;
  offlineJournal(limit?: number): OfflineEntry[];
  /**
   * What stands for the offline changes made so far (the stamp file's identity, size and time), to
   * compare with an earlier one: another means changes were made since. A stat, no SQL: a running
   * kernel asks it for every request of a session ({@link journalStampFile}).
   */
  journalStamp(): string;
  /**
   * Watches the stamp's file (made empty if there is none): `changed` at each change, `lost` once
   * the watch ends (the file removed or replaced, an error). False when it cannot be watched (in
   * memory, no inotify). Closed with the store.
   */
  watchJournalStamp(changed: () => void, lost: () => void): boolean;
}

/**
 * The file beside the database that every journalled change made without the kernel grows by a
 * byte once committed: a running kernel stats it to learn of the change before its tick (which
 * reads the journal itself), so a session whose registration a change ended is refused at its next
 * request, reads too, without a registry lookup per request (PROTOCOL §8.4). Undefined: in memory.
 * Never trimmed: only whoever can write the home's database grows it (the CLI on the home and a
 * home's first start; no persona's request journals), by a byte per change beside the journal row
 * and the audit record each change makes; cut back, a stamp taken later could equal an earlier one.
 */
export function journalStampFile(dbName: string, memory: boolean): string | undefined {
  return memory ? undefined : `${dbName}-offline`;
}

/** The persona registry, and the journal of administrative changes made without the kernel. */
export function RegistryRows<B extends StoreBase>(Base: B): WithRows<B, PersonaStore & JournalStore> {
  return class RegistryRows extends Base implements PersonaStore, JournalStore {
    readonly #get: Statement = this.db.prepare("SELECT id, public_key, created_at FROM personas WHERE id = ?");
    readonly #add: Statement = this.db.prepare(
      "INSERT INTO personas (id, public_key, created_at, registered_by) VALUES (?, ?, ?, ?)",
    );
    readonly #under: Statement = this.db.prepare(
      `SELECT id, public_key, created_at FROM personas WHERE ${inTreeSql("id")} AND id > ? ORDER BY id LIMIT ?`,
    );
    readonly #countWithin: Statement = this.db.prepare(`SELECT count(*) AS n FROM personas WHERE ${inTreeSql("registered_by")}`);
    readonly #registrar: Statement = this.db.prepare("SELECT registered_by FROM personas WHERE id = ?");
    readonly #registeredWithin: Statement = this.db.prepare(
      `SELECT id FROM personas WHERE ${inTreeSql("registered_by")} ORDER BY id`,
    );
    readonly #registeredBy: Statement = this.db.prepare("SELECT id FROM personas WHERE registered_by = ? ORDER BY id");
    readonly #remove: Statement = this.db.prepare("DELETE FROM personas WHERE id = ?");
    readonly #list: Statement = this.db.prepare("SELECT id, public_key, created_at FROM personas ORDER BY id");
    readonly #changed: ((id: string | undefined) => void)[] = [];

    getPersona(id: string): PersonaRecord | undefined {
      const r = this.#get.get(id) as Row | undefined;
      return r && toPersona(r);
    }
    addPersona(id: string, publicKey: Uint8Array, registeredBy?: string): void {
      // The host's clock, not the kernel's (KernelOptions.clock): the expulsion rule compares it
      // with when work began (an op's createdAt, an upload's began, a process's since, all the
      // host's) to tell a removed holder's work from a later holder's of the same id; and the
      // CLI registers without a kernel. On the kernel's clock, one behind the host's, a new
      // holder's registration would read as older than the removed holder's work.
      this.#add.run(id, Buffer.from(publicKey), Date.now(), registeredBy ?? null);
      for (const cb of this.#changed) cb(id);
    }
    personasUnder(id: string, after = "", limit = -1): PersonaRecord[] {
      return (this.#under.all(...treeArgs(id), after, limit) as Row[]).map(toPersona);
    }
    registrarOf(id: string): string | null | undefined {
      const r = this.#registrar.get(id) as { registered_by: string | null } | undefined;
      return r?.registered_by;
    }
    registeredWithin(id: string): string[] {
      return (this.#registeredWithin.all(...treeArgs(id)) as { id: string }[]).map((r) => r.id);
    }
    registeredBy(id: string): string[] {
      return (this.#registeredBy.all(id) as { id: string }[]).map((r) => r.id);
    }
    countRegisteredWithin(id: string): number {
      return (this.#countWithin.get(...treeArgs(id)) as { n: number }).n;
    }
    removePersona(id: string): boolean {
      const removed = this.#remove.run(id).changes > 0;
      if (removed) for (const cb of this.#changed) cb(id);
      return removed;
    }
    onRegistryChange(cb: (id: string | undefined) => void): void {
      this.#changed.push(cb);
    }
    registryChangedElsewhere(): void {
      for (const cb of this.#changed) cb(undefined);
    }
    listPersonas(): PersonaRecord[] {
      return (this.#list.all() as Row[]).map(toPersona);
    }

    /**
     * Runs an administrative change made without the kernel (the CLI on the home database) and
     * journals it in the same transaction; the kernel moves the journal into the audit chain.
     * A change that returns `false` changed nothing and is not journalled. The entry may be made
     * from the change's result (what it ended, say), in the same transaction.
     */
    withJournal<T>(entry: JournalEntry | ((result: T) => JournalEntry), change: () => T): T {
      const r = this.#journalled(entry, change);
      // Grown only once the change committed (a transaction this one is inside commits later: the
      // kernel's tick takes it in then): a kernel that sees the stamp change sees the change.
      if (r !== false && !this.db.inTransaction) this.#stamp();
      return r;
    }
    readonly #stampFile = journalStampFile(this.db.name, this.db.memory);
    #stamp(): void {
      if (this.#stampFile === undefined) return;
      try {
        appendFileSync(this.#stampFile, "+", { mode: 0o600 });
      } catch {
        // Committed all the same: a running kernel takes the change in at its next tick.
      }
    }
    #watcher: FSWatcher | undefined;
    watchJournalStamp(changed: () => void, lost: () => void): boolean {
      if (this.#stampFile === undefined || this.#watcher) return false;
      try {
        // A file must be there to be watched; an empty one is no change (its size is in the stamp).
        appendFileSync(this.#stampFile, "", { mode: 0o600 });
        const w = watch(this.#stampFile, { persistent: false });
        const end = () => {
          w.close();
          if (this.#watcher === w) this.#watcher = undefined;
          lost();
        };
        w.on("change", (kind) => {
          changed();
          // A rename (removed, replaced) ends what this watch can tell.
          if (kind === "rename") end();
        });
        w.on("error", end);
        this.#watcher = w;
        return true;
      } catch {
        return false;
      }
    }
    override close(): void {
      this.#watcher?.close();
      this.#watcher = undefined;
      super.close();
    }
    journalStamp(): string {
      const st = this.#stampFile === undefined ? undefined : statSync(this.#stampFile, { throwIfNoEntry: false });
      return st ? `${st.ino}:${st.size}:${st.mtimeMs}` : "";
    }
    #journalled<T>(entry: JournalEntry | ((result: T) => JournalEntry), change: () => T): T {
      return this.db.transaction(() => {
        const r = change();
        if (r === false) return r;
        if (typeof entry === "function") entry = entry(r);
        this.prep("INSERT INTO offline_journal (time, actor, op, target, message) VALUES (?, ?, ?, ?, ?)").run(
          Date.now(),
          entry.actor,
          entry.op,
          entry.target,
          entry.message,
        );
        return r;
      })();
    }
    offlineJournal(limit = -1): OfflineEntry[] {
      this.settleAudit();
      return this.prep("SELECT id, time, actor, op, target, message FROM offline_journal ORDER BY id LIMIT ?").all(
        limit,
      ) as OfflineEntry[];
    }
  };
}

function toPersona(r: Row): PersonaRecord {
  return { id: r.id as string, publicKey: r.public_key as Uint8Array, createdAt: r.created_at as number };
}
