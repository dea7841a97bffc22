import { createHash } from "node:crypto";
import {
  type CborMap,
  decodeCanonical,
  encodeCanonical,
  type Grant,
  type Response,
  sha256,
  withEncodedBody,
} from "@kpip/protocol";
import { DEDUPE_ADMIN_RESERVE_SHARE, DEDUPE_RUNNING_TREE_SHARE } from "../limits.js";
import type { AuditStore, DedupeRow } from "../store/types.js";
import { DedupeTable, type KeyHash } from "./dedupe-table.js";

/** The authority a grant carries, without its validity period (a refreshed token carries the same), and its base64. */
const authorityDigests = new WeakMap<Grant, { digest: Buffer; tag: string }>();
function authorityOf(g: Grant): { digest: Buffer; tag: string } {
  let d = authorityDigests.get(g);
  if (!d) {
    // Every part that narrows what the grant allows: a rights caveat (pairFilters) left out made a
    // token narrowed by one the same authority as the token itself. Of its lifetime, `maxExp`: a
    // refreshed copy keeps it (only `exp` moves), a copy with an `exp` caveat has a lower one.
    const { subject, rights, pairFilters, opFilters, targetFilters, limits, workspaces, domains, above, maxExp } = g;
    const digest = createHash("sha256")
      .update(
        JSON.stringify([
          subject,
          rights,
          opFilters,
          targetFilters,
          limits,
          workspaces ?? null,
          domains ?? null,
          pairFilters,
          above ?? null,
          maxExp,
        ]),
      )
      .digest();
    d = { digest, tag: digest.toString("base64") };
    authorityDigests.set(g, d);
  }
  return d;
}

/** {@link dedupeHash}'s input under a grant, reused (the hash is synchronous). */
const PAIR = Buffer.alloc(64);

/**
 * The hash a request is remembered by: its intent's hash bound to the authority that allowed it
 * (the grant's rights, filters, limits and scopes; the capability ids when an embedder's
 * authorizer gives no grant). A retry with the same ids and bytes under another capability — a
 * narrower token of the same persona replaying a mint made under a wider one — is then not the
 * same request and never receives the recorded answer; a refreshed token's retry still is.
 */
export function dedupeHash(intentHash: Buffer, authority: { grant?: Grant; capIds: string[] }): Buffer {
  if (authority.grant && intentHash.length === 32) {
    // The 64 bytes hashed, in one reused buffer: the protocol's one-shot hash, no Hash object per request.
    PAIR.set(intentHash, 0);
    PAIR.set(authorityOf(authority.grant).digest, 32);
    return sha256(PAIR);
  }
  const a = authority.grant ? authorityOf(authority.grant).digest : Buffer.from(JSON.stringify([...authority.capIds].sort()));
  return sha256(Buffer.concat([intentHash, a]));
}

/**
 * What the dedupe cache remembers a request by (the same binding as {@link dedupeHash}): for an
 * op with effects that hash, as its durable record stores it, and no separate authority (the
 * hash binds it); for a read-only op, which keeps no durable record (§11 rule 4), the intent
 * hash and the authority's tag, kept side by side: no SHA-256 of its own per request. The two
 * forms never equal each other: only an op with effects has an empty authority.
 */
export interface DedupeTag {
  /** The 32 bytes remembered: the dedupe hash (an op with effects) or the intent hash (read-only). */
  bytes: Uint8Array;
  /** A read-only op's authority tag (the grant's digest, base64, or its capability ids); "" for an op with effects. */
  authority: string;
  /** The dedupe hash of an op with effects (its durable record's). */
  hash?: Buffer;
}

export function dedupeTag(intentHash: Buffer, authority: { grant?: Grant; capIds: string[] }, effects: boolean): DedupeTag {
  if (effects) {
    const hash = dedupeHash(intentHash, authority);
    return { bytes: hash, authority: "", hash };
  }
  const a = authority.grant ? authorityOf(authority.grant).tag : JSON.stringify([...authority.capIds].sort());
  return { bytes: intentHash, authority: a };
}

/** What an arriving request is, given earlier attempts with the same key. */
export type DedupeVerdict =
  | { kind: "new" }
  /** The same ids with another intent, or under another authority: refused, and told nothing of the first. */
  | { kind: "conflict" }
  /** A retry of an op with effects: answered from the record, never run twice. */
  | { kind: "answer"; response: Response | Promise<Response> }
  /** A retry of a read-only op: running it again is the answer. */
  | { kind: "rerun" };

// The verdicts without data are constants: no object per request.
const NEW: DedupeVerdict = Object.freeze({ kind: "new" });
const CONFLICT: DedupeVerdict = Object.freeze({ kind: "conflict" });
const RERUN: DedupeVerdict = Object.freeze({ kind: "rerun" });

/**
 * Remembers requests by (persona, client instance id, request id) for the dedupe window, so a
 * retried request is answered from the record instead of running twice. Memory holds only the
 * tag per request (and the promise while it runs): the responses of ops with effects live in
 * the store, committed with their outcome records, and read-only ops simply run again.
 * Bounded: past `maxEntries` the oldest tenth of the answered requests goes at once. A request
 * still running is never forgotten, by the bound or the window (which counts from its answer,
 * PROTOCOL §11 rule 3): forgotten, a duplicate of it would find no record — its effect not yet
 * committed with one — and run the effect a second time. So running requests are bounded
 * instead: `maxEntries` in all, `perTree` per persona tree; past either, a request is refused
 * (retryable RESOURCE, {@link admits}) before it begins, rather than one running is forgotten.
 *
 * The memory is a {@link DedupeTable}: typed arrays rather than a Map entry, an object and
 * strings per request (100,000 of those were most of the old generation every major GC marked).
 * Its lookups compare whole keys, so two keys that share a slot are never confused (a wrong
 * "answer" would hand one persona's answer to another request), and its index hash is keyed
 * per process, so a peer choosing request ids cannot make lookups slow. The behaviour is the
 * Map's it replaced, pinned by a model-based test against that class (`dedupe-table.test.ts`).
 */
export class DedupeCache {
  private readonly table: DedupeTable<Promise<Response>>;

  constructor(
    readonly windowMs: number,
    private readonly store?: Pick<AuditStore, "lookupDedupe" | "putDedupe" | "transaction">,
    maxEntries = 100_000,
    /** The table's index hash: a test's weak one forces collisions. */
    hash?: KeyHash,
    /** Running requests one persona tree may have (default: a {@link DEDUPE_RUNNING_TREE_SHARE}th of `maxEntries`). */
    perTree = Math.max(1, Math.floor(maxEntries / DEDUPE_RUNNING_TREE_SHARE)),
    /**
     * The admin persona: the last {@link DEDUPE_ADMIN_RESERVE_SHARE}th of `maxEntries` running
     * are its alone, and it is exempt from its tree's share.
     */
    admin?: string,
  ) {
    const reserve = Math.max(1, Math.floor(maxEntries / DEDUPE_ADMIN_RESERVE_SHARE));
    this.table = new DedupeTable(maxEntries, Math.max(1, Math.floor(maxEntries / 10)), hash, perTree, admin, reserve);
  }

  /** Requests running now (their records cannot be evicted). */
  get runningCount(): number {
    return this.table.running;
  }

  /** Whether a request of `persona` (by default the tree's root) in tree `tree` may begin (then be registered {@link running}): O(1). */
  admits(tree: string, persona: string = tree): boolean {
    return this.table.admits(tree, persona);
  }

  /** Why {@link admits} refused a request of `persona` in `tree`: the refusal's message (RESOURCE, retryable). */
  refusal(tree: string, persona: string = tree): string {
    const t = this.table;
    if (t.reservedFull(persona))
      return `the kernel has ${t.running} requests running: the last ${t.adminReserve} of the dedupe memory's ${t.maxEntries} (dedupeMaxEntries) are reserved for the admin; retry once some are answered`;
    // The whole table first: the admin persona, exempt from its tree's share, is refused only by it.
    return t.running < t.maxEntries && t.treeFull(tree)
      ? `persona tree ${tree} has ${t.perTree} requests running, its share of the kernel's dedupe memory (dedupeMaxEntries / ${DEDUPE_RUNNING_TREE_SHARE}): retry once some are answered`
      : `the kernel has ${t.maxEntries} requests running, the dedupe memory's bound (dedupeMaxEntries): retry once some are answered`;
  }

  /** Whether answers are kept in a store (and `commitWith` records them). */
  get durable(): boolean {
    return this.store !== undefined;
  }

  get size(): number {
    return this.table.size;
  }

  /** Interned clients and authorities held: none once every request is forgotten (tests). */
  get interned(): number {
    return this.table.interned;
  }

  /** The longest run a lookup may walk in the table's index (tests). */
  longestRun(): number {
    return this.table.longestRun();
  }

  /** Classifies a request by its {@link dedupeTag}; `effects`: the op changes state, so its answer is in the store. */
  check(key: string, t: DedupeTag, now: number, effects: boolean): DedupeVerdict {
    const table = this.table;
    const r = table.find(key);
    // A running record has not expired, whatever its age: the window counts from the answer.
    const pending = r !== -1 ? table.pending(r) : undefined;
    if (pending !== undefined || (r !== -1 && table.expires(r) >= now)) {
      if (!table.sameTag(r, t.bytes, t.authority)) return CONFLICT;
      if (pending) return { kind: "answer", response: pending };
      if (!effects) return RERUN;
    } else if (r !== -1) {
      table.remove(r);
    }
    if (!effects) return NEW;
    // Ops with effects: the durable record (it also survives a kernel restart).
    const row = this.store?.lookupDedupe(key, now);
    if (!row) return NEW;
    if (t.authority !== "" || Buffer.compare(row.hash, t.bytes) !== 0) return CONFLICT;
    // Sent as the recorded bytes, not encoded again from their decoding.
    const response = withEncodedBody(decodeCanonical(row.response) as unknown as Response, row.response);
    return { kind: "answer", response };
  }

  /**
   * Runs an op's effect in one store transaction together with the durable dedupe record of the
   * answer it returns (PROTOCOL §11 rule 9): a kernel killed after the effect committed has the
   * record too, so the client's retry is answered from it instead of running the effect twice.
   * The answer `answer` builds is marked with the bytes recorded: sent, it is not encoded again.
   */
  commitWith<T>(
    key: string,
    hash: Buffer,
    effect: () => T,
    answer: (v: T) => Response,
    /** The request's intent record, the log's head at the commit and the outcome record's detail (DedupeRow). */
    at?: (v: T) => Pick<DedupeRow, "intentSeq" | "afterSeq" | "detail" | "revoked">,
  ): T {
    const s = this.store;
    if (!s) return effect();
    return s.transaction(() => {
      const v = effect();
      // Encoded once: the record keeps these bytes, and the answer goes out as them (withEncodedBody).
      s.putDedupe({ key, hash, response: encodedResponse(answer(v)), expires: Date.now() + this.windowMs, ...at?.(v) });
      return v;
    });
  }

  /**
   * The first attempt is running: a duplicate arriving now waits for the same answer, however
   * long it runs. `tree`: its persona tree, whose running requests {@link admits} bounds (asked
   * first: with no room this throws). Answers the record that remembers it, for {@link settled}.
   */
  running(key: string, t: DedupeTag, pending: Promise<Response>, now: number, tree = ""): number {
    return this.table.put(key, t.bytes, t.authority, now + this.windowMs, pending, tree);
  }

  /**
   * The attempt settled: keep only its tag (its response, if any is kept, is in the store).
   * `record` and `pending`: what {@link running} answered and was given; while that record still
   * holds this attempt's promise (no other request's: promises are never shared) it is this key's
   * record, found without a second lookup.
   */
  settled(key: string, t: DedupeTag, now: number, record = -1, pending?: Promise<Response>): void {
    // Kept in place: the record stays where `running` put it, a request's duration early for
    // `sweep`, which only frees memory.
    const table = this.table;
    if (record !== -1 && pending !== undefined && table.pending(record) === pending) {
      table.settle(record, now + this.windowMs);
      return;
    }
    const r = table.find(key);
    // Another attempt with these ids is running (this one's record was replaced: a put of the
    // same key, as a test may make): its record stays as it is, or a duplicate of it would run
    // again. It settles itself.
    const other = r !== -1 ? table.pending(r) : undefined;
    if (other !== undefined && other !== pending) return;
    if (r !== -1 && table.sameTag(r, t.bytes, t.authority)) table.settle(r, now + this.windowMs);
    else table.put(key, t.bytes, t.authority, now + this.windowMs, undefined);
  }

  /** Forgets the attempt `pending` if it is still the one remembered (it threw: no answer to give a retry). */
  abandoned(key: string, pending: Promise<Response>): void {
    const r = this.table.find(key);
    if (r !== -1 && this.table.pending(r) === pending) this.table.remove(r);
  }

  /**
   * Forgets the attempt `pending` (its failure was transient), so its retry runs again. Only its
   * own record: one under its key that another attempt registered since (a put of the same key
   * replaced this one's) stays, or a retry arriving while that attempt runs would run its effect a second time.
   * `record`: what {@link running} answered, checked first (no lookup when it still holds `pending`).
   */
  forget(key: string, pending: Promise<Response>, record = -1): void {
    const table = this.table;
    if (record !== -1 && table.pending(record) === pending) table.remove(record);
    else this.abandoned(key, pending);
  }

  /** Drops expired answered entries, oldest first, up to the first that has not expired (order of answer); running ones stay. */
  sweep(now: number): void {
    this.table.sweep(now);
  }
}

/**
 * The response's canonical bytes, with which it is marked (withEncodedBody): the dedupe record
 * keeps these bytes and the session sends them as they are, encoded once.
 */
export function encodedResponse(response: Response): Uint8Array {
  const bytes = encodeCanonical(response as unknown as CborMap);
  withEncodedBody(response, bytes);
  return bytes;
}
