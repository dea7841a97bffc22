// What the kernel does when its store has no room: tell that apart from other failures, keep
// the writes it refused for later (bounded), and log what repeats once a while. Pure, no I/O:
// the store, the pipeline and the services use it below the kernel's own StorageSpace.

/**
 * The codes that mean "no room to write" — the file system (ENOSPC) or the user's quota on it
 * (EDQUOT) is full, or SQLite was refused room (SQLITE_FULL) — and nothing else: the write did not
 * happen and the disk holds what it held. An I/O error (EIO, a failed sync) is not one of them: it
 * may have lost what was written before, and fails the storage closed (docs/reliability.md).
 */
const FULL_CODES = new Set(["ENOSPC", "EDQUOT", "SQLITE_FULL"]);

/** Whether `e`, or an error it was caused by, says the kernel's storage has no room (never a sync's failure). */
export function isStorageFull(e: unknown): boolean {
  for (let x = e, depth = 0; x instanceof Error && depth < 4; x = x.cause, depth++) {
    const code = (x as NodeJS.ErrnoException).code;
    if (code !== undefined && FULL_CODES.has(code)) return true;
  }
  return false;
}

/**
 * What a request is answered whose audit record could not be committed for lack of room
 * (RESOURCE: retryable once there is room; PROTOCOL §10.1). Its effect, if one committed before its
 * outcome record failed, is kept with its recorded answer: a retry is answered from that record.
 */
export const STORAGE_FULL_UNRECORDED =
  "the kernel's storage is full: this request could not be recorded; retry once space is freed";

/** How often a condition that goes on is logged again, with what it refused meanwhile. */
export const REPEAT_LOG_MS = 60_000;

/**
 * Logs a failure that repeats (a background round, each request while the disk is full) once
 * when it begins and then at most once per `everyMs`, with the count since: a full disk must not
 * also fill the log (and the log may be on that disk).
 */
export class RepeatedFailureLog {
  private lastAt = 0;
  private since = 0;
  constructor(
    private readonly log: (fields: Record<string, unknown>, msg: string) => void,
    private readonly msg: string,
    private readonly everyMs = REPEAT_LOG_MS,
    private readonly now: () => number = Date.now,
  ) {}

  failed(fields: Record<string, unknown>): void {
    this.since++;
    const t = this.now();
    if (this.lastAt !== 0 && t - this.lastAt < this.everyMs) return;
    this.log(this.since > 1 ? { ...fields, times: this.since } : fields, this.msg);
    this.lastAt = t;
    this.since = 0;
  }

  /** The condition began and was just logged by its caller: the next repeat is logged `everyMs` from now. */
  began(): void {
    this.lastAt = this.now();
    this.since = 0;
  }

  /** The condition ended: the next failure is logged at once. */
  reset(): void {
    this.lastAt = 0;
    this.since = 0;
  }
}

/**
 * The memory the bulky part of kept writes (ended ops' results, ended agents' output) may hold
 * while the storage is full: `max` in all and `perTree` per persona tree. Each kept end held up
 * to 2 × maxOutputBytes, and ends are not bounded by what is in progress: a persona whose small
 * rows still fit (a spawn, a submit) ended one command or agent after another, each kept with
 * its output, until the kernel's heap was gone.
 */
export class KeptBytes {
  private total = 0;
  private readonly byTree = new Map<string, number>();

  constructor(
    readonly max: number,
    readonly perTree = Math.floor(max / 4),
  ) {}

  /** Takes `n` bytes for `tree` when both its share and the total have room; else false, nothing taken. */
  take(tree: string, n: number): boolean {
    const t = this.byTree.get(tree) ?? 0;
    if (this.total + n > this.max || t + n > this.perTree) return false;
    this.total += n;
    this.byTree.set(tree, t + n);
    return true;
  }

  release(tree: string, n: number): void {
    this.total -= n;
    const t = (this.byTree.get(tree) ?? 0) - n;
    if (t > 0) this.byTree.set(tree, t);
    else this.byTree.delete(tree);
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.total;
  }
}

/** The default of the `maxKeptOutputBytes` setting (components built without one: unit tests). */
export const DEFAULT_KEPT_BYTES = 64 * 1024 * 1024;

/** How a {@link KeptWrites} counts the bulky part of what it keeps, and keeps a value without it past its {@link KeptBytes}. */
export interface KeptBulk<V> {
  budget(): KeptBytes;
  /** The bulky part's bytes in `v` (0: nothing to count). */
  bytes(v: V): number;
  /** `v` without its bulky part (`bytes` of it), saying so. */
  without(v: V, bytes: number): V;
}

/**
 * Writes a full disk refused, kept in force in memory and written once there is room: one per
 * key (an op's row change, an agent's end, a revocation), a later change to the same key merged
 * over the kept one. Callers read what is kept over the store ({@link get}), and the housekeeping
 * tick calls {@link flush}. With `bulk`, the bulky part of what is kept (results, output) is held
 * only within its budget, per persona tree: past it a value is kept without it.
 */
export class KeptWrites<V> {
  private readonly kept = new Map<string, V>();
  /** The bytes each kept value holds of `bulk`'s budget, and for which tree. */
  private readonly charged = new Map<string, { tree: string; n: number }>();

  constructor(
    /** A write refused room: the condition is noted and logged there (StorageSpace.failed). */
    private readonly onFull?: (e: unknown) => void,
    private readonly bulk?: KeptBulk<V>,
  ) {}

  /**
   * Writes `value` (merged over what is kept under `key`, if anything); refused room, keeps it
   * (counted to `tree`'s share of the bulk budget) and answers false. Any other failure is
   * thrown, nothing kept.
   */
  write(key: string, value: V, write: (v: V) => void, merge: (kept: V, next: V) => V = (_, next) => next, tree = "-"): boolean {
    const before = this.kept.get(key);
    const v = before === undefined ? value : merge(before, value);
    try {
      write(v);
    } catch (e) {
      if (!isStorageFull(e)) throw e;
      this.keep(key, v, tree);
      this.onFull?.(e);
      return false;
    }
    this.delete(key);
    return true;
  }

  /**
   * Keeps `value` (merged over what is kept under `key`) without trying to write it: a write that
   * must wait for another to be stored first (an agent's end for its token's revocation).
   */
  hold(key: string, value: V, merge: (kept: V, next: V) => V = (_, next) => next, tree = "-"): void {
    const before = this.kept.get(key);
    this.keep(key, before === undefined ? value : merge(before, value), tree);
  }

  private keep(key: string, value: V, tree: string): void {
    let v = value;
    this.release(key);
    const n = this.bulk?.bytes(v) ?? 0;
    if (this.bulk && n > 0) {
      if (this.bulk.budget().take(tree, n)) this.charged.set(key, { tree, n });
      else v = this.bulk.without(v, n);
    }
    this.kept.set(key, v);
  }

  private release(key: string): void {
    const c = this.charged.get(key);
    if (!c) return;
    this.charged.delete(key);
    this.bulk?.budget().release(c.tree, c.n);
  }

  /**
   * Writes what is kept, oldest first, until one is refused room again (the rest wait for the
   * next call); one that fails otherwise is given to `failed` and dropped (not retried each tick)
   * unless `failed` answers true: then it is kept and the flush stops.
   */
  flush(write: (key: string, v: V) => void, failed: (e: unknown, key: string) => unknown): void {
    for (const [key, v] of this.kept) {
      try {
        write(key, v);
      } catch (e) {
        // Kept on a full disk, or when `failed` says so (what must not be lost, as a revocation).
        if (isStorageFull(e) || failed(e, key) === true) return;
      }
      this.delete(key);
    }
  }

  get(key: string): V | undefined {
    return this.kept.get(key);
  }

  delete(key: string): void {
    this.kept.delete(key);
    this.release(key);
  }

  keys(): IterableIterator<string> {
    return this.kept.keys();
  }

  get size(): number {
    return this.kept.size;
  }
}

/** What an end kept without its output or result says (the budget of {@link KeptBytes} was spent). */
export function notKeptMessage(what: string, bytes: number): string {
  return `${what} (${bytes} bytes) was not kept: the kernel's storage was full when it ended, and the output it holds for ends waiting for room was spent`;
}
