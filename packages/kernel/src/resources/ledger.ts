import { randomUUID } from "node:crypto";
import type { Grant } from "@kpip/protocol";
import { OpError } from "../primitives/types.js";
import type { Allocation, LedgerStore } from "../store/types.js";

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
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly store: LedgerStore,
    private readonly quotas: Quotas,
    private readonly clock: () => number = Date.now,
  ) {}

  /** Moves an object's bytes to `persona` (its new owner) and checks the limits; call inside the write's transaction. */
  chargeStorage(
    persona: string,
    workspace: string,
    previous: { size: number; owner: string } | undefined,
    newSize: number,
    grant: Grant | undefined,
  ): void {
    this.checkStorage(persona, workspace, previous, newSize, grant);
    const oldSize = previous?.size ?? 0;
    const wsDelta = newSize - oldSize;
    const personaDelta = previous && previous.owner === persona ? newSize - oldSize : newSize;
    if (previous && previous.owner !== persona && previous.owner !== "") {
      this.store.adjustUsage(personaScope(previous.owner), "storage.bytes", -oldSize);
    }
    this.store.adjustUsage(personaScope(persona), "storage.bytes", personaDelta);
    this.store.adjustUsage(workspaceScope(workspace), "storage.bytes", wsDelta);
  }

  /**
   * Whether writing `newSize` bytes over `previous` would stay within the limits, changing
   * nothing: an upload is refused at its start rather than after its bytes filled the disk.
   */
  checkStorage(
    persona: string,
    workspace: string,
    previous: { size: number; owner: string } | undefined,
    newSize: number,
    grant: Grant | undefined,
    /** Bytes already promised and not yet charged (uploads in progress): counted as used. */
    pending: { persona: number; workspace: number } = { persona: 0, workspace: 0 },
  ): void {
    const oldSize = previous?.size ?? 0;
    const personaDelta = previous && previous.owner === persona ? newSize - oldSize : newSize;
    const limit = grant?.limits["storage.bytes"];
    if (limit !== undefined && personaDelta > 0) {
      const used = this.store.usage(personaScope(persona), "storage.bytes") + pending.persona;
      if (used + personaDelta > limit)
        throw new OpError("RESOURCE", `storage.bytes exceeded for ${persona}: ${used} used + ${personaDelta} > limit ${limit}`);
    }
    const wsDelta = newSize - oldSize;
    if (this.quotas.workspaceStorageBytes > 0 && wsDelta > 0) {
      const used = this.store.usage(workspaceScope(workspace), "storage.bytes") + pending.workspace;
      if (used + wsDelta > this.quotas.workspaceStorageBytes)
        throw new OpError(
          "RESOURCE",
          `storage.bytes exceeded for workspace ${workspace}: ${used} used + ${wsDelta} > quota ${this.quotas.workspaceStorageBytes}`,
        );
    }
  }

  /** An object was deleted: its bytes leave its owner's and its workspace's usage. */
  releaseStorage(workspace: string, previous: { size: number; owner: string }): void {
    if (previous.owner !== "") this.store.adjustUsage(personaScope(previous.owner), "storage.bytes", -previous.size);
    this.store.adjustUsage(workspaceScope(workspace), "storage.bytes", -previous.size);
  }

  /** Reserves `amount` of a named resource for `persona`, within the grant's limit for it. */
  alloc(persona: string, resource: string, amount: number, grant: Grant | undefined): Allocation {
    const limit = grant && Object.hasOwn(grant.limits, resource) ? grant.limits[resource] : undefined;
    const used = this.store.usage(personaScope(persona), resource);
    if (limit !== undefined && used + amount > limit) {
      throw new OpError("RESOURCE", `${resource} exceeded for ${persona}: ${used} used + ${amount} > limit ${limit}`);
    }
    const a: Allocation = { id: randomUUID(), persona, resource, amount, createdAt: this.clock() };
    this.store.addAllocation(a);
    this.store.adjustUsage(personaScope(persona), resource, amount);
    return a;
  }

  /** Frees an allocation of `persona`'s; another persona's allocation is reported as absent. */
  free(persona: string, id: string): Allocation {
    const a = this.store.getAllocation(id);
    if (!a || a.persona !== persona) throw new OpError("SEMANTIC", `no allocation ${id} of ${persona}`);
    this.store.removeAllocation(id);
    this.store.adjustUsage(personaScope(persona), a.resource, -a.amount);
    return a;
  }

  usage(scope: string): Record<string, number> {
    return this.store.usageOf(scope);
  }

  inFlightOf(persona: string): number {
    return this.inFlight.get(persona) ?? 0;
  }

  /**
   * Counts one more thing in flight for `persona` without a check: a compute command takes over
   * the slot of the request that started it and holds it for its whole life. Returns the release.
   */
  hold(persona: string): () => void {
    this.inFlight.set(persona, (this.inFlight.get(persona) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.leave(persona);
    };
  }

  /** One thing in flight for `persona` ended (a request {@link admit}ted, or through {@link hold}'s release). */
  leave(persona: string): void {
    const m = (this.inFlight.get(persona) ?? 1) - 1;
    // A persona's count stays at 0 while few personas are counted: deleting and adding it again
    // around every request churned the Map, rehashing its table every few requests.
    if (m <= 0 && this.inFlight.size > IDLE_COUNTS_KEPT) this.inFlight.delete(persona);
    else this.inFlight.set(persona, Math.max(0, m));
  }

  /**
   * Admits one request under the grant's `concurrent` (requests in flight for the persona)
   * and `rate` (requests per second for the token's family: a refreshed copy shares the bucket
   * of the token it came from, `rateKey`) limits. The request then counts as in flight until
   * {@link leave} (no release closure per request).
   */
  admit(persona: string, grant: Grant | undefined, rateKey = grant?.id): void {
    const concurrent = grant?.limits.concurrent;
    const n = this.inFlight.get(persona) ?? 0;
    if (concurrent !== undefined && n >= concurrent) {
      throw new OpError("RESOURCE", `concurrent exceeded for ${persona}: ${n} requests in flight, limit ${concurrent}`);
    }
    const rate = grant?.limits.rate;
    if (rate !== undefined && grant && rateKey !== undefined) {
      const now = this.clock();
      const b = this.buckets.get(rateKey) ?? { tokens: rate, at: now };
      b.tokens = Math.min(rate, b.tokens + ((now - b.at) / 1000) * rate);
      b.at = now;
      if (b.tokens < 1) {
        this.buckets.set(rateKey, b);
        throw new OpError("RESOURCE", `rate exceeded for token ${grant.id}: limit ${rate} requests per second`);
      }
      b.tokens -= 1;
      this.buckets.set(rateKey, b);
      if (this.buckets.size > 100_000) this.buckets.delete(this.buckets.keys().next().value as string);
    }
    this.inFlight.set(persona, n + 1);
  }
}

/** Personas whose count of 0 is kept rather than deleted (see {@link ResourceLedger.leave}). */
const IDLE_COUNTS_KEPT = 1024;
