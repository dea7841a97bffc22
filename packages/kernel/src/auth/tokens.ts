import { randomBytes } from "node:crypto";
import { attenuate, compiledRightsWithin, compileGrant, type Grant, mintToken, type Token } from "@kpip/protocol";
import { OpError } from "../primitives/types.js";
import { childBounds, FIRST_SEGMENT, GrantBounds, type TreeRoots, treeBoundRefusal } from "../resources/lineage.js";
import type { TokenStore } from "../store/types.js";
import type { EnforcerLimits } from "./enforcer.js";
import type { RootKeys } from "./keys.js";
import { checkMintSpecSize, type MintSpec } from "./mint-spec.js";
import type { Revocations } from "./revocations.js";

/**
 * The token service: issues tokens (mint within a parent grant, refresh within the maximum
 * lifetime), revokes them, and prunes expired ones. It decides nothing about requests: that is
 * the enforcer's (auth/enforcer.ts), which shares its revocations.
 */
export class TokenService {
  /** Live tokens per minter, counted in the store at most once a second and kept up by each mint. */
  private readonly live = new Map<string, { n: number; at: number }>();

  constructor(
    private readonly keys: RootKeys,
    private readonly store: TokenStore,
    private readonly revoked: Revocations,
    private readonly clock: () => number,
    readonly limits: EnforcerLimits,
    /** The top of each persona's tree (the live-token bound counts it): the kernel passes the registry's. */
    private readonly roots: TreeRoots = FIRST_SEGMENT,
    /** Each grant's token row (its bounds and rate family), read once: the kernel's, shared with the enforcer. */
    private readonly grantBounds: GrantBounds = new GrantBounds(store),
  ) {}

  /** The kernel's clock, which tokens are minted and judged by: what asks which tokens are live reads it too. */
  now(): number {
    return this.clock();
  }

  /** Mints a token for `spec.sub` within `parent` (escalation refused) and records it. */
  mint(parent: Grant | undefined, mintedBy: string, spec: MintSpec): Token {
    checkMintSpecSize(spec, this.limits.maxTokenBytes);
    const now = this.clock();
    this.checkLiveTokens(mintedBy, now);
    let exp = now + spec.ttlMs;
    let maxExp = spec.maxLifetimeMs === undefined ? exp : now + spec.maxLifetimeMs;
    if (maxExp < exp) throw new EscalationError("max lifetime shorter than the ttl");
    if (parent) {
      if (!compiledRightsWithin(spec.rights, compileGrant(parent)))
        throw new EscalationError("the requested rights exceed the minting token's grant");
      if (exp > parent.exp || maxExp > parent.maxExp)
        throw new EscalationError("the requested lifetime outlives the minting token");
      for (const [k, v] of Object.entries(parent.limits)) {
        const asked = spec.limits && Object.hasOwn(spec.limits, k) ? spec.limits[k] : undefined;
        if (asked === undefined || asked > v) throw new EscalationError(`limit ${k} must be at most ${v}`);
      }
      if (parent.workspaces) {
        if (!spec.workspaces?.every((w) => parent.workspaces?.includes(w))) {
          throw new EscalationError(`workspaces must be within [${parent.workspaces.join(", ")}]`);
        }
      }
      if (parent.domains && !spec.domains?.every((d) => parent.domains?.includes(d))) {
        throw new EscalationError(`domains must be within [${parent.domains.join(", ")}]`);
      }
      exp = Math.min(exp, parent.exp);
      maxExp = Math.min(maxExp, parent.maxExp);
    }
    const { kid, key } = this.keys.current();
    // What the chain's tokens hold over the personas spec.sub lies under: they bound it too.
    const bounds = parent ? childBounds(spec.sub, parent, this.grantBounds.of(parent)) : [];
    const claims = {
      id: randomBytes(16).toString("hex"),
      kid,
      sub: spec.sub,
      rights: spec.rights,
      limits: spec.limits ?? {},
      nbf: now,
      exp,
      maxExp,
      chain: parent ? [...parent.chain, parent.id] : [],
      ...(spec.workspaces ? { workspaces: spec.workspaces } : {}),
      ...(spec.domains ? { domains: spec.domains } : {}),
    };
    const token = mintToken(key, claims);
    this.store.recordToken({
      id: claims.id,
      kid,
      sub: spec.sub,
      chain: claims.chain,
      exp,
      mintedBy,
      createdAt: now,
      // A child of a rate-limited token stays in its parent's family: the bucket is shared along
      // the chain, so minting children multiplies no rate. Without a parent rate, a new family.
      family: parent?.limits.rate !== undefined ? this.grantBounds.family(parent) : claims.id,
      bounds,
    });
    return token;
  }

  /**
   * The live-token bound: a persona cannot grow the token table without end (RESOURCE). It counts
   * the persona's whole tree (its agents and sub-personas mint on its budget), except under an
   * exempt persona (the admin's agents each have their own).
   */
  private checkLiveTokens(by: string, now: number): void {
    if (this.limits.exempt.includes(by)) return;
    const root = this.roots.of(by);
    const mintedBy = this.limits.exempt.includes(root) ? by : root;
    let e = this.live.get(mintedBy);
    // Counting is a scan of the minter's rows: at most once a second (what is revoked or expires
    // in between only keeps the count high). Revoked tokens count until they expire, so a
    // mint-and-revoke loop meets the bound too; at the bound the minter's expired rows go first.
    if (!e || now - e.at >= 1000 || now < e.at) {
      let n = this.store.countTokensBy(mintedBy);
      if (n >= this.limits.maxLiveTokens && this.store.pruneTokensBy(mintedBy, now) > 0) n = this.store.countTokensBy(mintedBy);
      e = { n, at: now };
      this.live.delete(mintedBy);
      this.live.set(mintedBy, e);
      if (this.live.size > 10_000) this.live.delete(this.live.keys().next().value as string);
    }
    if (e.n >= this.limits.maxLiveTokens)
      throw new OpError(
        "RESOURCE",
        `${treeBoundRefusal(mintedBy, by, {
          held: (max, bound) =>
            `already has ${e.n} unexpired tokens it minted or refreshed, revoked ones included (${bound} ${max})`,
          what: "unexpired tokens minted or refreshed, revoked ones included",
          bound: "maxLiveTokens",
          limit: this.limits.maxLiveTokens,
        })}; let some expire`,
      );
    // Counted now: the caller records the token next.
    e.n++;
  }

  /** A fresh token with a later expiry (same ttl as before, capped by the max lifetime); caveats are kept. */
  refresh(token: Token, by: string): Token {
    const c = token.claims;
    const now = this.clock();
    this.checkLiveTokens(by, now);
    const ttl = c.exp - c.nbf;
    const { kid, key } = this.keys.current();
    const claims = {
      ...c,
      id: randomBytes(16).toString("hex"),
      kid,
      nbf: now,
      exp: Math.min(now + ttl, c.maxExp),
      chain: [...c.chain, c.id],
    };
    let fresh = mintToken(key, claims);
    for (const cv of token.caveats) fresh = attenuate(fresh, cv);
    const old = this.store.getToken(c.id);
    this.store.recordToken({
      id: claims.id,
      kid,
      sub: c.sub,
      chain: claims.chain,
      exp: claims.exp,
      mintedBy: by,
      createdAt: now,
      // A refreshed copy stays in its family: it shares the rate bucket (and the ledger's key).
      family: old?.family ?? c.id,
      // ...and in its refresh family: revoking any copy ends them all (Revocations.revoke).
      copyOf: old?.copyOf ?? c.id,
      // ...and is held to the same limits of the tokens it came from.
      ...(old?.bounds ? { bounds: old.bounds } : {}),
    });
    return fresh;
  }

  /**
   * Revokes a token id (and so every token minted from it) and, with `family`, every refreshed
   * copy of it and what was minted from them; effective at once for every handle. Returns
   * whether it was newly revoked, every token it ended, and the family's root when it was
   * revoked too ({@link Revocations.revoke}).
   */
  revoke(id: string, by: string, family = true): { changed: boolean; ended: string[]; root?: string } {
    return this.revoked.revoke(id, by, this.clock(), family);
  }

  /**
   * {@link revoke} by the kernel itself (an agent's end or kill): in force at once even when the
   * store has no room for it, which is stored once there is ({@link storeKept}) — as is one whose
   * row a transaction it was made in rolled back (the kill it ends the authority of stands).
   */
  revokeNow(id: string, by: string): { changed: boolean; ended: string[]; root?: string } {
    return this.revoked.revoke(id, by, this.clock(), true, true);
  }

  /** {@link revokeAll} by the kernel itself, as {@link revokeNow}: in force at once even when the store has no room for it. */
  revokeAllNow(ids: readonly string[], by: string): { changed: number; ended: string[]; revoked: string[] } {
    return this.revoked.revokeAll(ids, by, this.clock(), true);
  }

  /** Stores the revocations a full disk kept back (the housekeeping tick). */
  storeKept(): void {
    this.revoked.storeKept();
  }

  /** How many revocations wait for room. */
  get unstoredCount(): number {
    return this.revoked.unstoredCount;
  }

  /** Whether `id`'s revocation is in force in memory only, waiting for room ({@link revokeNow}). */
  revocationUnstored(id: string): boolean {
    return this.revoked.unstoredRevocation(id);
  }

  /** Revokes each of `ids`, as {@link revoke} one by one would, in one pass over the store. */
  revokeAll(ids: readonly string[], by: string): { changed: number; ended: string[]; revoked: string[] } {
    return this.revoked.revokeAll(ids, by, this.clock());
  }

  /** Takes in revocations another process recorded in the store (e.g. the CLI without the kernel). */
  reloadRevocations(): void {
    this.revoked.reload();
  }

  /** Prunes tokens expired before `before` and forgets the revocations pruned with them. */
  pruneExpired(before: number): number {
    const n = this.store.pruneTokens(before);
    if (n > 0) this.revoked.reload(true);
    return n;
  }

  /** Notes where a revocation is on the audit record, for the messages of the refusals it causes. */
  noteRevokeRecord(id: string, seq: number): void {
    this.revoked.noteRecord(id, seq);
  }

  /** Whether `id`'s revocation is on the audit record, as noted ({@link noteRevokeRecord}); false when unknown. */
  revokeRecorded(id: string): boolean {
    return this.revoked.recorded(id);
  }

  isRevoked(g: Pick<Grant, "id" | "chain">): boolean {
    return this.revoked.covers(g);
  }

  /** The ids revoked since the fan-out last asked, or undefined: too many, check everything ({@link Revocations.takeFresh}). */
  takeRevoked(): string[] | undefined {
    return this.revoked.takeFresh();
  }
}

/** A mint that would widen rights, limits or lifetime: PERMISSION, whoever asked (token.mint, agent.spawn). */
export class EscalationError extends OpError {
  override name = "EscalationError";
  constructor(message: string) {
    super("PERMISSION", `escalation refused: ${message}`);
  }
}
