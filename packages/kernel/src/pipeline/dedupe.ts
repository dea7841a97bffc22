import { createHash } from "node:crypto";
import { type CborMap, decodeCanonical, encodeCanonical, type Grant, type Response, withEncodedBody } from "@kpip/protocol";
import type { AuditStore } from "../store/types.js";

/** The authority a grant carries, without its validity period (a refreshed token carries the same), and its base64. */
const authorityDigests = new WeakMap<Grant, { digest: Buffer; tag: string }>();
function authorityOf(g: Grant): { digest: Buffer; tag: string } {
  let d = authorityDigests.get(g);
  if (!d) {
    const { subject, rights, opFilters, targetFilters, limits, workspaces, domains } = g;
    const digest = createHash("sha256")
      .update(JSON.stringify([subject, rights, opFilters, targetFilters, limits, workspaces ?? null, domains ?? null]))
      .digest();
    d = { digest, tag: digest.toString("base64") };
    authorityDigests.set(g, d);
  }
  return d;
}

/**
 * The hash a request is remembered by: its intent's hash bound to the authority that allowed it
 * (the grant's rights, filters, limits and scopes; the capability ids when an embedder's
 * authorizer gives no grant). A retry with the same ids and bytes under another capability — a
 * narrower token of the same persona replaying a mint made under a wider one — is then not the
 * same request and never receives the recorded answer; a refreshed token's retry still is.
 */
export function dedupeHash(intentHash: Buffer, authority: { grant?: Grant; capIds: string[] }): Buffer {
  const h = createHash("sha256").update(intentHash);
  if (authority.grant) h.update(authorityOf(authority.grant).digest);
  else h.update(JSON.stringify([...authority.capIds].sort()));
  return h.digest();
}

/**
 * What the dedupe cache remembers a request by (the same binding as {@link dedupeHash}): for an
 * op with effects that hash, base64, as its durable record stores it, and no separate authority
 * (the hash binds it); for a read-only op, which keeps no durable record (§11 rule 4), the intent
 * hash (latin1: its 32 bytes as 32 chars, as the pipeline has it) and the authority's tag, kept
 * side by side: no SHA-256 of its own per request, and no string built per request to hold
 * both (a 100,000-entry cache keeps every one). The two forms never equal each other: only an
 * op with effects has an empty authority.
 */
export interface DedupeTag {
  tag: string;
  authority: string;
  /** The dedupe hash of an op with effects (its durable record's). */
  hash?: Buffer;
}

export function dedupeTag(
  intentHash: Buffer,
  intentHashLatin1: string,
  authority: { grant?: Grant; capIds: string[] },
  effects: boolean,
): DedupeTag {
  if (effects) {
    const hash = dedupeHash(intentHash, authority);
    return { tag: hash.toString("base64"), authority: "", hash };
  }
  const a = authority.grant ? authorityOf(authority.grant).tag : JSON.stringify([...authority.capIds].sort());
  return { tag: intentHashLatin1, authority: a };
}

interface Entry {
  /** The request's {@link dedupeTag} (strings: far smaller than a Buffer per entry). */
  tag: string;
  authority: string;
  expires: number;
  /** The promise of the response while the first attempt runs; dropped once it settles. */
  pending?: Promise<Response>;
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
 * intent hash per request (and the promise while it runs): the responses of ops with effects
 * live in the store, committed with their outcome records, and read-only ops simply run again.
 * Bounded: past `maxEntries` the oldest entries go first.
 */
export class DedupeCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    readonly windowMs: number,
    private readonly store?: Pick<AuditStore, "lookupDedupe" | "putDedupe" | "transaction">,
    private readonly maxEntries = 100_000,
  ) {}

  /** Whether answers are kept in a store (and `commitWith` records them). */
  get durable(): boolean {
    return this.store !== undefined;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Classifies a request by its {@link dedupeTag}; `effects`: the op changes state, so its answer is in the store. */
  check(key: string, t: DedupeTag, now: number, effects: boolean): DedupeVerdict {
    const e = this.entries.get(key);
    if (e !== undefined && e.expires >= now) {
      if (e.tag !== t.tag || e.authority !== t.authority) return CONFLICT;
      if (e.pending) return { kind: "answer", response: e.pending };
      if (!effects) return RERUN;
    } else if (e !== undefined) {
      this.entries.delete(key);
    }
    if (!effects) return NEW;
    // Ops with effects: the durable record (it also survives a kernel restart).
    const row = this.store?.lookupDedupe(key, now);
    if (!row) return NEW;
    if (t.authority !== "" || Buffer.from(row.hash).toString("base64") !== t.tag) return CONFLICT;
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
  commitWith<T>(key: string, hash: Buffer, effect: () => T, answer: (v: T) => Response): T {
    const s = this.store;
    if (!s) return effect();
    return s.transaction(() => {
      const v = effect();
      // Encoded once: the record keeps these bytes, and the answer goes out as them (withEncodedBody).
      s.putDedupe({ key, hash, response: encodedResponse(answer(v)), expires: Date.now() + this.windowMs });
      return v;
    });
  }

  /** The first attempt is running: a duplicate arriving now waits for the same answer. */
  running(key: string, t: DedupeTag, pending: Promise<Response>, now: number): void {
    this.put(key, { tag: t.tag, authority: t.authority, expires: now + this.windowMs, pending });
  }

  /** The attempt settled: keep only its hash (its response, if any is kept, is in the store). */
  settled(key: string, t: DedupeTag, now: number): void {
    // Kept in place (a delete and a set per request left the Map deleted slots to rehash): the
    // entry sits where `running` put it, a request's duration early for `sweep`, which only frees memory.
    const e = this.entries.get(key);
    if (e !== undefined && e.tag === t.tag && e.authority === t.authority) {
      e.pending = undefined;
      e.expires = now + this.windowMs;
    } else this.put(key, { tag: t.tag, authority: t.authority, expires: now + this.windowMs });
  }

  private put(key: string, e: Entry): void {
    this.entries.delete(key);
    this.entries.set(key, e);
    if (this.entries.size > this.maxEntries) {
      // Evict the oldest tenth at once: a Map keeps deleted slots at its front until it
      // rehashes, so evicting one entry per insert walked ever more of them (25 µs a request
      // once full, halving throughput); a batch walks them once and lets the Map compact.
      let n = Math.max(1, Math.floor(this.maxEntries / 10));
      for (const k of this.entries.keys()) {
        this.entries.delete(k);
        if (--n === 0) break;
      }
    }
  }

  /** Forgets the attempt `pending` if it is still the one remembered (it threw: no answer to give a retry). */
  abandoned(key: string, pending: Promise<Response>): void {
    if (this.entries.get(key)?.pending === pending) this.entries.delete(key);
  }

  /** Forgets a request whose failure was transient, so its retry runs again. */
  forget(key: string): void {
    this.entries.delete(key);
  }

  /** Drops expired entries (Map order is insertion order, so expiry order). */
  sweep(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.expires >= now) break;
      this.entries.delete(k);
    }
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
