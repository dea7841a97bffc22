import { randomUUID } from "node:crypto";
import type { Grant } from "@kpip/protocol";
import { OpError } from "../primitives/types.js";
import { OBJECT_ROW_BYTES, objectCost } from "../store/object-cost.js";
import type { Allocation, LedgerStore } from "../store/types.js";
import {
  countAtLimit,
  forEachInLineage,
  GrantBounds,
  inTree,
  limitRefusal,
  limitsOver,
  overName,
  personaLineage,
} from "./lineage.js";

export interface Quotas {
  /** Bytes one workspace may hold in storage; 0 = no kernel-wide limit. */
  workspaceStorageBytes: number;
}

export const personaScope = (p: string) => `persona:${p}`;
export const workspaceScope = (w: string) => `workspace:${w}`;

/**
 * Resource accounting. Durable usage (storage bytes, allocations) lives in the ledger store
 * and changes in the same transaction as the thing it counts; transient usage (requests in
 * flight, request rate) is counted in memory. Limits come from the authorizing token's
 * grant (`limits`) and from kernel-wide quotas; exceeding one is RESOURCE, naming it.
 */
export class ResourceLedger {
  private readonly inFlight = new Map<string, number>();
  /** Control requests each persona (itself, not its tree) has in flight past a `concurrent` limit (see {@link admit}). */
  private readonly pastLimit = new Map<string, number>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly store: LedgerStore,
    private readonly quotas: Quotas,
    private readonly clock: () => number = Date.now,
    /** The limits the tokens a grant was minted from hold over it. */
    private readonly bounds: GrantBounds = new GrantBounds(),
  ) {}

  /**
   * Moves the object at `path` to `persona` (its new owner) with a body of `newSize` bytes and
   * checks the limits; call inside the write's transaction. The object's cost ({@link objectCost}:
   * its body, its path and its row) is charged to the owner and to every persona it lies under
   * ({@link personaLineage}): an agent's bytes count against its spawner's `storage.bytes` too.
   */
  chargeStorage(
    persona: string,
    workspace: string,
    path: string,
    previous: { size: number; owner: string } | undefined,
    newSize: number,
    grant: Grant | undefined,
  ): void {
    this.checkStorage(persona, workspace, path, previous, newSize, grant);
    const [was, now] = costs(path, previous, newSize);
    for (const [scope, delta] of storageDeltas(persona, was, now))
      if (delta !== 0) this.store.adjustUsage(personaScope(scope), "storage.bytes", delta);
    this.store.adjustUsage(workspaceScope(workspace), "storage.bytes", now - (was?.size ?? 0));
  }

  /**
   * Whether writing a body of `newSize` bytes at `path` over `previous` would stay within the limits, changing
   * nothing: an upload is refused at its start rather than after its bytes filled the disk.
   * The grant's `storage.bytes` bounds its subject's tree; the limits of the tokens it was
   * minted from ({@link GrantBounds}) bound theirs.
   */
  checkStorage(
    persona: string,
    workspace: string,
    path: string,
    previous: { size: number; owner: string } | undefined,
    newSize: number,
    grant: Grant | undefined,
    /** Costs already promised and not yet charged (uploads in progress, by a persona's tree): counted as used. */
    pending: { persona: (scope: string) => number; workspace: number } = { persona: () => 0, workspace: 0 },
    /**
     * An upload begins: its partial bytes take the disk whatever object they will replace, so a
     * change that adds nothing (over an object as large) is still checked while others are
     * pending. Otherwise (a write, a commit) a change that adds nothing is never refused.
     */
    beginning = false,
  ): void {
    const [was, now] = costs(path, previous, newSize);
    const limits = limitsOver(persona, grant, this.bounds.of(grant), "storage.bytes");
    if (limits.length > 0) {
      const deltas = storageDeltas(persona, was, now);
      for (const [scope, limit] of limits) {
        const delta = deltas.get(scope) ?? 0;
        const waiting = pending.persona(scope);
        if (delta <= 0 && !(beginning && waiting > 0)) continue;
        const used = this.store.usage(personaScope(scope), "storage.bytes") + waiting;
        if (used + delta > limit)
          throw new OpError(
            "RESOURCE",
            limitRefusal(
              "storage.bytes",
              scope,
              persona,
              // Its usage is its own tree's (which it may query); not `delta`, the new cost less the
              // replaced object's, whose size a persona that may write but not stat it (its
              // sub-persona's) would read off it. `used + now` passes the limit whenever `used + delta` does.
              `${used} used + ${now} > limit ${limit}${ROW_NOTE}`,
              // Not `delta`: over a sibling's object that is the new cost less its size (case 681).
              `an object costing ${now} bytes would pass its limit ${limit}${ROW_NOTE}`,
            ),
          );
      }
    }
    const wsDelta = now - (was?.size ?? 0);
    if (this.quotas.workspaceStorageBytes > 0 && (wsDelta > 0 || (beginning && pending.workspace > 0))) {
      const used = this.store.usage(workspaceScope(workspace), "storage.bytes") + pending.workspace;
      if (used + wsDelta > this.quotas.workspaceStorageBytes)
        // Not what the workspace holds: every persona's bytes there, which only a grant over the
        // workspace may query (resource.query obj://<ws>, case 326). Nor what the change adds:
        // that is the new cost less the replaced object's, whose size a persona that may write
        // it but not stat it would read off the refusal (case 681). The new cost is the caller's own.
        throw new OpError(
          "RESOURCE",
          `storage.bytes exceeded for workspace ${workspace}: an object costing ${now} bytes there would pass its quota ${this.quotas.workspaceStorageBytes}${ROW_NOTE}`,
        );
    }
  }

  /**
   * The object at `path` was deleted: its cost (body, path and row) leaves its owner's (and the
   * owner's ancestors') and its workspace's usage. The deleted path's generation row the store
   * keeps (at most DELETED_PATHS_KEPT a workspace, case 346) is charged to no one: see PROTOCOL §13.
   */
  releaseStorage(workspace: string, path: string, previous: { size: number; owner: string }): void {
    const cost = objectCost(path, previous.size);
    if (previous.owner !== "")
      for (const scope of personaLineage(previous.owner)) this.store.adjustUsage(personaScope(scope), "storage.bytes", -cost);
    this.store.adjustUsage(workspaceScope(workspace), "storage.bytes", -cost);
  }

  /** Reserves `amount` of a named resource for `persona` (and its ancestors), within every limit on it. */
  alloc(persona: string, resource: string, amount: number, grant: Grant | undefined): Allocation {
    for (const [scope, limit] of limitsOver(persona, grant, this.bounds.of(grant), resource)) {
      const used = this.store.usage(personaScope(scope), resource);
      if (used + amount > limit)
        throw new OpError(
          "RESOURCE",
          limitRefusal(
            resource,
            scope,
            persona,
            `${used} used + ${amount} > limit ${limit}`,
            `${amount} more would pass its limit ${limit}`,
          ),
        );
    }
    const lineage = personaLineage(persona);
    // Usage is a sum a query answers with: never past what every peer decodes (2^53 - 1), whatever
    // the limits say (a resource no token limits had no bound at all). The lineage's top holds the
    // largest sum (every persona under it is charged there too): one read covers them all.
    const top = lineage[lineage.length - 1] as string;
    const sum = this.store.usage(personaScope(top), resource);
    if (sum + amount > Number.MAX_SAFE_INTEGER)
      throw new OpError(
        "RESOURCE",
        top === persona
          ? `${resource} for ${persona}: ${sum} used + ${amount} is past 2^53 - 1`
          : `${resource} for ${overName(top, persona)}: ${amount} more would pass 2^53 - 1`,
      );
    const a: Allocation = { id: randomUUID(), persona, resource, amount, createdAt: this.clock() };
    this.store.addAllocation(a);
    for (const scope of lineage) this.store.adjustUsage(personaScope(scope), resource, amount);
    return a;
  }

  /**
   * Frees an allocation of `persona`'s or of a persona under it (a sub-persona's or an agent's,
   * while they exist: one that leaves the registry has its allocations freed with it,
   * {@link releaseAllocationsWithin}). Anyone else's is reported as absent.
   */
  free(persona: string, id: string): Allocation {
    const a = this.store.getAllocation(id);
    if (!a || !inTree(a.persona, persona)) throw new OpError("SEMANTIC", `no allocation ${id} of ${persona}`);
    this.store.removeAllocation(id);
    // Uncharged where it was charged: the allocating persona and those above it.
    for (const scope of personaLineage(a.persona)) this.store.adjustUsage(personaScope(scope), a.resource, -a.amount);
    return a;
  }

  usage(scope: string): Record<string, number> {
    return this.store.usageOf(scope);
  }

  /** Requests in flight of `persona`'s tree (bound: passed as a counter on every request). */
  readonly inFlightOf = (persona: string): number => this.inFlight.get(persona) ?? 0;

  /**
   * Counts one more thing in flight for `persona` without a check: a compute command takes over
   * the slot of the request that started it and holds it for its whole life. Returns the release.
   */
  hold(persona: string): () => void {
    this.enter(persona);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.leave(persona);
    };
  }

  /** One more thing in flight for `persona` and every persona it lies under. */
  private enter(persona: string): void {
    forEachInLineage(persona, this.enterOne);
  }

  private readonly enterOne = (persona: string): void => {
    this.inFlight.set(persona, (this.inFlight.get(persona) ?? 0) + 1);
  };

  /**
   * One thing in flight for `persona` (and so for every persona it lies under) ended: a request
   * {@link admit}ted (`pastLimit`: what admit answered), or through {@link hold}'s release.
   */
  leave(persona: string, pastLimit = false): void {
    forEachInLineage(persona, this.leaveOne);
    if (!pastLimit) return;
    const n = (this.pastLimit.get(persona) ?? 1) - 1;
    if (n <= 0) this.pastLimit.delete(persona);
    else this.pastLimit.set(persona, n);
  }

  private readonly leaveOne = (persona: string): void => {
    const m = (this.inFlight.get(persona) ?? 1) - 1;
    // A persona's count stays at 0 while few personas are counted: deleting and adding it again
    // around every request churned the Map, rehashing its table every few requests.
    if (m <= 0 && this.inFlight.size > IDLE_COUNTS_KEPT) this.inFlight.delete(persona);
    else this.inFlight.set(persona, Math.max(0, m));
  };

  /**
   * Admits one request under the grant's `concurrent` (requests in flight in its subject's tree;
   * the tokens it was minted from bound theirs) and `rate` (requests per second for
   * the token's family: a refreshed or minted copy shares the bucket of the token it came from,
   * `rateKey`) limits. The request then counts as in flight until {@link leave} (no release
   * closure per request).
   *
   * A `control` request (a look at or a stop of one's own work) over `concurrent` is admitted
   * still while its persona itself — not its tree: an agent must not use up what its spawner
   * needs to stop it — has fewer than {@link CONTROL_ALLOWANCE} such requests in flight: tasks
   * and commands hold their slots for their whole lives, and their persona must be able to see
   * and cancel them. `rate` bounds it as any request. Answers whether it was admitted so (pass
   * that to {@link leave}).
   */
  admit(persona: string, grant: Grant | undefined, rateKey = grant?.id, control = false): boolean {
    const over = countAtLimit(persona, grant, this.bounds.of(grant), "concurrent", this.inFlightOf);
    const past = over !== undefined && control && (this.pastLimit.get(persona) ?? 0) < CONTROL_ALLOWANCE;
    if (over && !past)
      throw new OpError(
        "RESOURCE",
        limitRefusal(
          "concurrent",
          over.scope,
          persona,
          `${over.n} requests in flight, limit ${over.limit}`,
          `one more request would pass its limit ${over.limit}`,
        ),
      );
    if (grant && rateKey !== undefined && !this.drawRate(grant, rateKey, true)) throw rateRefusal(grant);
    this.enter(persona);
    if (past) this.pastLimit.set(persona, (this.pastLimit.get(persona) ?? 0) + 1);
    return past;
  }

  /**
   * A request the grant did not allow (PERMISSION) draws on its family's `rate` as an allowed one
   * does: its check cost the kernel as much, and a `rate` that counted only what it allowed bounded
   * nothing of a persona that asks only for what it is refused. False: the bucket was empty.
   */
  spendRefused(grant: Grant, rateKey: string): boolean {
    return this.drawRate(grant, rateKey, true);
  }

  /** Whether the grant has a `rate` and its family no request left this instant (the bucket empty); spends nothing. */
  rateSpent(grant: Grant): boolean {
    return grant.limits.rate !== undefined && !this.drawRate(grant, this.bounds.family(grant), false);
  }

  /**
   * Refills the family's bucket to now; true if a request fits (and `spend`: it is taken). No `rate`: always true.
   * A grant is held to its own rate too, in a bucket its family's grants of that rate share: the
   * family's bucket, refilled at a wider copy's rate whenever that copy is used, would otherwise let
   * a copy narrowed to a lower rate (a `limits` caveat, a child minted lower) take one request per
   * refill, past its own rate (case 663). Both must fit; a refreshed copy (same rate) gets no fresh budget.
   */
  private drawRate(grant: Grant, rateKey: string, spend: boolean): boolean {
    const rate = grant.limits.rate;
    if (rate === undefined) return true;
    const now = this.clock();
    const family = this.bucket(rateKey, rate, now);
    const own = this.bucket(`${rateKey}\0${rate}`, rate, now);
    // Making the second may have evicted the first (the table's oldest): kept, past the bound by one.
    if (!this.buckets.has(rateKey)) this.buckets.set(rateKey, family);
    const fits = family.tokens >= 1 && own.tokens >= 1;
    if (fits && spend) {
      family.tokens -= 1;
      own.tokens -= 1;
    }
    return fits;
  }

  /** The bucket of `key` refilled at `rate` to now (a new one full). */
  private bucket(key: string, rate: number, now: number): { tokens: number; at: number } {
    let b = this.buckets.get(key);
    if (b === undefined) {
      b = { tokens: rate, at: now };
      this.buckets.set(key, b);
      if (this.buckets.size > 100_000) this.buckets.delete(this.buckets.keys().next().value as string);
    }
    // A clock stepped back is no time passed, not a debt (case 664).
    b.tokens = Math.min(rate, b.tokens + (Math.max(0, now - b.at) / 1000) * rate);
    b.at = now;
    return b;
  }
}

/** The refusal of a request over its grant's `rate`. */
export function rateRefusal(grant: Grant): OpError {
  return new OpError("RESOURCE", `rate exceeded for token ${grant.id}: limit ${grant.limits.rate} requests per second`);
}

/**
 * Frees every allocation held by `root` or a persona under it, uncharged where each was charged;
 * call inside the transaction that takes those personas out of the registry. A persona that
 * leaves (an agent that ended, a sub-persona removed) held allocation ids no one else was told:
 * kept, they counted against its tree's limits and its maxAllocationsPerPersona for good, and a
 * later persona under the same id (the next agent of that name) inherited them. Returns how many.
 */
export function releaseAllocationsWithin(store: LedgerStore, root: string, alone = false): number {
  // `alone`: `root`'s own allocations, not those of the personas under it.
  const held = store.allocationsWithin(root).filter((a) => !alone || a.persona === root);
  for (const a of held) {
    store.removeAllocation(a.id);
    for (const scope of personaLineage(a.persona)) store.adjustUsage(personaScope(scope), a.resource, -a.amount);
  }
  return held.length;
}

/**
 * Control requests (op.status, op.cancel, agent.kill…) one persona may have in flight past its
 * `concurrent` limit (see {@link ResourceLedger.admit}): a look and a stop at once, never a flood.
 */
export const CONTROL_ALLOWANCE = 2;

/** Personas whose count of 0 is kept rather than deleted (see {@link ResourceLedger.leave}). */
const IDLE_COUNTS_KEPT = 1024;

/** Said with a storage.bytes refusal: an empty object is not free. */
const ROW_NOTE = ` (an object counts its body, its path's bytes and ${OBJECT_ROW_BYTES} for its row)`;

/** The previous object's and the new one's costs at `path` ({@link objectCost}), the previous owner kept. */
function costs(
  path: string,
  previous: { size: number; owner: string } | undefined,
  newSize: number,
): [{ size: number; owner: string } | undefined, number] {
  return [previous && { size: objectCost(path, previous.size), owner: previous.owner }, objectCost(path, newSize)];
}

/**
 * What writing an object costing `newSize` as `persona` over `previous` (its cost) changes, per
 * persona scope: the new owner's lineage gains the new cost, the previous owner's loses the old.
 */
function storageDeltas(
  persona: string,
  previous: { size: number; owner: string } | undefined,
  newSize: number,
): Map<string, number> {
  const d = new Map<string, number>();
  if (previous && previous.owner !== "")
    for (const s of personaLineage(previous.owner)) d.set(s, (d.get(s) ?? 0) - previous.size);
  for (const s of personaLineage(persona)) d.set(s, (d.get(s) ?? 0) + newSize);
  return d;
}
