import type { Grant } from "@kpip/protocol";
import { isStorageFull, KeptWrites } from "../store/storage-full.js";
import type { TokenRecord, TokenStore } from "../store/types.js";
import { TreeSharedFifo } from "./tree-shared-fifo.js";

/** How the audit log names a grant's token: its own id when attenuated offline, else its minted id. */
export const tokenRef = (g: Grant): string => g.derived ?? g.id;

/**
 * The token ids whose revocation covers a grant: its minted id, then each id up its chain (not a
 * derived token's own id: only minted tokens are revoked). Calls `visit` with each, once, until
 * it returns true; returns whether one did. The one statement of the rule: {@link
 * Revocations.covers} asks it whether one is revoked, and the indexes a revocation's fan-out
 * looks up (a session's handles, the event bus's subscriptions) file each grant under every one.
 */
export function coveringIds(g: Pick<Grant, "id" | "chain">, visit: (id: string) => boolean): boolean {
  if (visit(g.id)) return true;
  for (const id of g.chain) if (id !== g.id && visit(id)) return true;
  return false;
}

/** Derived tokens remembered as seen (per run): beyond this many, the oldest may be recorded again. */
const SEEN_DERIVED_MAX = 16_384;
/**
 * The share of {@link SEEN_DERIVED_MAX} one persona tree's uses may hold (a quarter, as for the
 * verified tokens): past it a tree's newly seen copy replaces its own oldest, so one tree's fresh
 * attenuations never push another's out of a revocation's `ended` (case 662).
 */
const SEEN_DERIVED_TREE_SHARE = 4;

/** Newly revoked ids kept for the fan-out; past this many it visits everything instead (one full pass). */
const FRESH_MAX = 4096;

/**
 * The revoked token ids (kept in memory, checked on every use), what each revocation ended, and
 * where it is on the audit record, so a refusal can name the revocation that caused it.
 */
export class Revocations {
  private readonly ids: Set<string>;
  /** Where each revocation is on the audit record (sequence number), where it was noted (kept in the store too). */
  private readonly seqs = new Map<string, number>();
  /**
   * Derived tokens seen used this run, by their own id → the ids they descend from (minted id and
   * its chain), each tree holding at most its share ({@link SEEN_DERIVED_TREE_SHARE}).
   */
  private readonly derived = new TreeSharedFifo<string[]>(SEEN_DERIVED_MAX, Number.POSITIVE_INFINITY, SEEN_DERIVED_TREE_SHARE);
  /**
   * Ids revoked since the revocation fan-out last took them ({@link takeFresh}), so it visits only
   * what a revoked id covers; undefined: too many to list, the fan-out visits everything once.
   */
  private fresh: Set<string> | undefined = new Set();
  /**
   * The kernel's own revocations (an agent's end) whose row a full disk refused: in force from
   * the moment they are made, kept in {@link reload}s, and stored once there is room ({@link storeKept}).
   */
  private readonly unstored = new KeptWrites<{ by: string; at: number }>();

  constructor(private readonly store: TokenStore) {
    this.ids = new Set(store.revokedTokenIds());
    for (const [id, seq] of store.revocationSeqs()) this.remember(id, seq);
  }

  /** Is the grant's token, or any token up its chain, revoked? (A token's id and chain are enough.) */
  covers(g: Pick<Grant, "id" | "chain">): boolean {
    return coveringIds(g, this.isRevokedId);
  }

  /** One function for every {@link covers} (asked at each use of a handle): no closure per check. */
  private readonly isRevokedId = (id: string): boolean => this.ids.has(id);

  /**
   * The ids revoked since the last call (what the revocation fan-out must reach: a grant is
   * covered by one only if it is the grant's id or in its chain), or undefined when more were
   * revoked than are listed (the fan-out then checks everything, as it did for every revocation).
   */
  takeFresh(): string[] | undefined {
    const f = this.fresh;
    this.fresh = new Set();
    return f && [...f];
  }

  private noteFresh(id: string): void {
    if (this.ids.has(id) || this.fresh === undefined) return;
    if (this.fresh.size >= FRESH_MAX) this.fresh = undefined;
    else this.fresh.add(id);
  }

  /** Notes a derived token's first use in this run by persona tree `tree`; false when it was already seen. */
  firstUse(g: Grant, tree: string): boolean {
    const id = g.derived;
    if (id === undefined || this.derived.has(id)) return false;
    this.derived.add(id, [...g.chain, g.id], tree, 0);
    return true;
  }

  /** "token X is revoked", naming the revocation that ended it (the nearest revoked ancestor) and its audit record. */
  message(g: Grant): string {
    const ref = tokenRef(g);
    // Of the ids covering the grant (coveringIds), the nearest one revoked: its own, else from the chain's end.
    const by = [g.id, ...[...g.chain].reverse()].find((id) => this.ids.has(id)) as string;
    const seq = this.seqs.get(by);
    const where = seq === undefined ? "" : ` (audit record ${seq})`;
    if (by === ref) return `token ${ref} is revoked${where}`;
    return `token ${ref} is revoked: ${by === g.id ? "the token it was derived from" : "its ancestor"} ${by} was revoked${where}`;
  }

  /** Whether `id`'s revocation is known to be on the audit record (its record noted: {@link noteRecord}). */
  recorded(id: string): boolean {
    return this.seqs.has(id);
  }

  /** Notes where a revocation is on the audit record, for the messages of the refusals it causes. */
  noteRecord(id: string, seq: number): void {
    this.remember(id, seq);
    try {
      this.store.noteRevocationSeq(id, seq);
    } catch (e) {
      // Only the messages of refusals after a restart would name it: never a reason to fail.
      if (!isStorageFull(e)) throw e;
    }
  }

  private remember(id: string, seq: number): void {
    if (this.seqs.size >= 100_000) this.seqs.delete(this.seqs.keys().next().value as string);
    this.seqs.set(id, seq);
  }

  /**
   * Revokes `id` and, with `family` (the default), its whole refresh family: the token its
   * refreshes started from (the family's root), whose id every copy's chain names, so every copy
   * and everything derived from any copy ends with it (PROTOCOL §13.1). Returns whether anything
   * was newly revoked, every token the revocation ended — the id itself and each unexpired token
   * (minted, refreshed, or derived and seen this run) descending from it or from the root that
   * was still usable, what the audit record of the revocation lists — and the root when it was
   * revoked with `id`.
   */
  revoke(
    id: string,
    by: string,
    now: number,
    family = true,
    /** The kernel's own revocation: in force even when the store has no room for it yet, or its transaction rolls back. */
    keepIfFull = false,
  ): { changed: boolean; ended: string[]; root?: string } {
    const revokeOne = (t: string) =>
      this.revokeWith(
        t,
        by,
        now,
        () => this.store.tokensDerivedFrom(t),
        () => this.seenUnder(t),
        keepIfFull,
      );
    const own = revokeOne(id);
    const root = family ? this.store.getToken(id)?.copyOf : undefined;
    if (root === undefined || root === id) return own;
    // After `id`: what descends from it is already listed (and not usable any more), each once.
    const rest = revokeOne(root);
    return { changed: own.changed || rest.changed, ended: [...own.ended, ...rest.ended], ...(rest.changed ? { root } : {}) };
  }

  /**
   * Revokes each of `ids` in turn, as {@link revoke} one by one would (`ended`: every token
   * ended, each once, in the same order), finding the tokens descending from them in one pass
   * over the store and one over the derived tokens seen, not one of each per id: a persona
   * tree's removal revokes a token per persona.
   */
  revokeAll(
    ids: readonly string[],
    by: string,
    now: number,
    /** As {@link revoke}'s: the kernel's own, in force even when the store has no room for them yet. */
    keepIfFull = false,
  ): { changed: number; ended: string[]; revoked: string[] } {
    // No refresh family is widened here: every copy has its root's subject, so a persona's
    // removal (revoking by subject) names every copy of its families already.
    if (ids.length === 1) {
      const r = this.revoke(ids[0] as string, by, now, false, keepIfFull);
      return { changed: r.changed ? 1 : 0, ended: r.ended, revoked: r.changed ? [ids[0] as string] : [] };
    }
    const derived = this.store.tokensDerivedFromAny(ids);
    const wanted = new Set(ids);
    const seen = new Map<string, [string, string[]][]>();
    for (const [d, up] of this.derived)
      for (const a of new Set(up)) {
        if (!wanted.has(a)) continue;
        const list = seen.get(a) ?? [];
        seen.set(a, list);
        list.push([d, up]);
      }
    const revoked: string[] = [];
    const ended: string[] = [];
    for (const id of ids) {
      const r = this.revokeWith(
        id,
        by,
        now,
        () => derived.get(id) ?? [],
        () => seen.get(id) ?? [],
        keepIfFull,
      );
      if (r.changed) revoked.push(id);
      ended.push(...r.ended);
    }
    return { changed: revoked.length, ended, revoked };
  }

  /** The derived tokens seen this run that descend from `id`, with the ids each descends from. */
  private seenUnder(id: string): [string, string[]][] {
    return [...this.derived].filter(([, up]) => up.includes(id));
  }

  private revokeWith(
    id: string,
    by: string,
    now: number,
    derived: () => TokenRecord[],
    seen: () => [string, string[]][],
    keepIfFull = false,
  ): { changed: boolean; ended: string[] } {
    const live = (ids: string[]) => !ids.some((x) => this.ids.has(x));
    const ended: string[] = [];
    if (!this.ids.has(id)) {
      const own = this.store.getToken(id);
      if (!own || live(own.chain)) ended.push(id);
      for (const t of derived()) if (t.exp > now && live([...t.chain, t.id])) ended.push(t.id);
      for (const [d, up] of seen()) if (live(up)) ended.push(d);
    }
    const known = this.ids.has(id);
    this.noteFresh(id);
    this.ids.add(id);
    if (!keepIfFull) {
      // Made in a transaction that then rolls back (a persona's removal whose commit failed), it
      // is undone here too: kept in force in memory alone, a restart would make the token valid again.
      // Only a row this call inserted: one stored already (another process's revocation, not
      // reloaded yet) outlives the rollback, and so does its revocation here.
      let inserted: boolean;
      try {
        inserted = this.store.revokeToken(id, by, now);
      } catch (e) {
        if (!known) this.store.onRollback(() => this.rolledBack(id));
        throw e;
      }
      if (inserted && !known) this.store.onRollback(() => this.rolledBack(id));
      return { changed: inserted, ended };
    }
    // Kept for room, it is new if it was not in force already; an earlier kept revocation of it stands.
    let changed = !known;
    this.unstored.write(
      id,
      { by, at: now },
      (r) => {
        changed = this.store.revokeToken(id, r.by, r.at);
      },
      (kept) => kept,
    );
    // The kernel's own (a killed agent's token) cannot be undone with its transaction — the kill
    // was made, and recorded — so its row, rolled back, waits for the next storeKept as a full
    // disk's (one stored before is found there, unchanged).
    this.store.onRollback(() => this.keepRolledBack(id, by, now));
    return { changed, ended };
  }

  /** A revocation's row was rolled back: unless the kernel's own keeps it in force ({@link keepRolledBack}), so is it here. */
  private rolledBack(id: string): void {
    if (this.unstored.get(id) === undefined) this.ids.delete(id);
  }

  /** The kernel's revocation's row was rolled back: in force still, its row stored at the next {@link storeKept}. */
  private keepRolledBack(id: string, by: string, at: number): void {
    this.ids.add(id);
    this.unstored.hold(id, { by, at }, (kept) => kept);
  }

  /** Stores the revocations a full disk kept back, until one is refused again (the housekeeping tick). */
  storeKept(): void {
    let failure: unknown;
    this.unstored.flush(
      (id, r) => this.store.revokeToken(id, r.by, r.at),
      // Any other failure fails the storage closed (the caller logs it). The revocation stays kept,
      // in force in memory: dropped, a reload would make the token valid again.
      (e) => {
        failure ??= e;
        return true;
      },
    );
    if (failure !== undefined) throw failure;
  }

  /** How many revocations wait for room. */
  get unstoredCount(): number {
    return this.unstored.size;
  }

  /** Whether `id`'s revocation is in force in memory only, waiting for room. */
  unstoredRevocation(id: string): boolean {
    return this.unstored.get(id) !== undefined;
  }

  /** Takes in what the store holds (revocations another process recorded; pruned ones forgotten when `reset`). */
  reload(reset = false): void {
    const before = reset ? new Set(this.ids) : this.ids;
    if (reset) {
      this.ids.clear();
      for (const id of this.unstored.keys()) this.ids.add(id);
    }
    for (const id of this.store.revokedTokenIds()) {
      // New to this process (revoked elsewhere): the fan-out reaches what it covers.
      if (!before.has(id)) this.noteFresh(id);
      this.ids.add(id);
    }
  }
}
