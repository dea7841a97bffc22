import { randomBytes, timingSafeEqual } from "node:crypto";
import {
  attenuate,
  compiledAllows,
  compiledRightsWithin,
  compileGrant,
  decodeToken,
  derivedTokenId,
  effectiveGrant,
  expectedSignature,
  type Grant,
  mintToken,
  personaWithin,
  type Token,
  type TokenError,
} from "@kpip/protocol";
import { OpError } from "../primitives/types.js";
import type { TokenStore } from "../store/types.js";
import type { AuthorizationRequest, Authorizer, Decision } from "./authorizer.js";
import type { HandleTable } from "./handles.js";
import type { RootKeys } from "./keys.js";
import { Revocations, tokenRef } from "./revocations.js";

export { tokenRef };

import { CACHE_ENTRIES, MAX_HANDLES_PER_SESSION } from "../limits.js";
import { checkMintSpecSize, type MintSpec } from "./mint-spec.js";

export { type BoundCapability, HandleTable } from "./handles.js";

/** The enforcer's bounds (kernel settings). */
export interface EnforcerLimits {
  /** Largest token accepted (ATTEST, token.bind, inline) or minted, in bytes of its wire form. */
  maxTokenBytes: number;
  /** Most unexpired tokens (revoked ones included) one persona may have minted or refreshed. */
  maxLiveTokens: number;
  /** Minters the live-token bound does not apply to (the kernel itself, the admin). */
  exempt: string[];
}

export const DEFAULT_ENFORCER_LIMITS: EnforcerLimits = { maxTokenBytes: 8192, maxLiveTokens: 1000, exempt: ["kernel"] };

/** Cached decisions per bound handle: a cache keyed by request fields must not grow with them. */
const DECISIONS_PER_HANDLE = 1024;
/** Inline tokens one request may carry: each unseen one costs a full verification (~0.2 µs a byte). */
export const MAX_INLINE_TOKENS = 4;
/** Token bytes one session may bind, in tokens of `maxTokenBytes`: what its verifications may cost in all. */
const SESSION_TOKEN_BYTES_IN_TOKENS = 16;

/** A refusal names the token when it decoded (its own id: {@link tokenRef}), so the record can. */
export type Verified = { ok: true; token: Token; grant: Grant } | { ok: false; code: string; message: string; id?: string };

/** A token attenuated offline, the first time this kernel run sees it used (for its audit record). */
export type DerivedUse = (token: Token, grant: Grant, persona: string, session: string | undefined) => void;

/** Ops a token always allows on itself (token://<its id>): presenting a token is the right to inspect, bind and refresh it. */
const SELF_OPS = new Set(["token.inspect", "token.refresh", "token.bind", "token.revoke"]);

/**
 * The capability enforcer (the bridge's CapEnforcer): verifies tokens by recomputing their
 * HMAC chain, binds them to handles, and decides every request against the handles and
 * inline tokens it names. No ambient authority: a request naming no usable capability is
 * refused. CAPABILITY = missing, malformed, expired, revoked, or not this persona's;
 * PERMISSION = a valid capability that does not grant this op on this target.
 */
export class CapEnforcer implements Authorizer {
  private readonly revoked: Revocations;
  /** Tokens already verified, by their exact bytes: the chain check is pure, so it is done once. */
  private readonly verified = new Map<string, { token: Token; grant: Grant }>();

  /** Live tokens per minter, counted in the store at most once a second and kept up by each mint. */
  private readonly live = new Map<string, { n: number; at: number }>();
  /** Rate-limit family of a grant: the id of the token its refreshes started from. */
  private readonly families = new WeakMap<Grant, string>();
  /** Called the first time a derived token is used in this run (set by the kernel: a `token.derived` record). */
  onDerived: DerivedUse | undefined;

  constructor(
    private readonly keys: RootKeys,
    private readonly store: TokenStore,
    private readonly clock: () => number = Date.now,
    readonly limits: EnforcerLimits = DEFAULT_ENFORCER_LIMITS,
  ) {
    this.revoked = new Revocations(store);
  }

  /** Verifies a token for use by `persona` now. */
  verify(bytesOrToken: Uint8Array | Token, persona: string): Verified {
    // Bounded before any work: a token's checks and its compiled patterns grow with its size.
    if (bytesOrToken instanceof Uint8Array && bytesOrToken.length > this.limits.maxTokenBytes) {
      return {
        ok: false,
        code: "TOO_LARGE",
        message: `token is ${bytesOrToken.length} bytes; the kernel accepts tokens of at most ${this.limits.maxTokenBytes} bytes`,
      };
    }
    const cacheKey = bytesOrToken instanceof Uint8Array ? Buffer.from(bytesOrToken).toString("latin1") : undefined;
    const hit = cacheKey === undefined ? undefined : this.verified.get(cacheKey);
    if (hit) {
      // Key retirement, time, revocation and subject are live facts: checked on every use, never cached.
      if (!this.keys.get(hit.token.claims.kid))
        return { ok: false, code: "UNKNOWN_KEY", message: "token was signed with an unknown or retired key" };
      const why = this.unusable(hit.grant, persona);
      if (why) return { ok: false, ...why, id: tokenRef(hit.grant) };
      return { ok: true, token: hit.token, grant: hit.grant };
    }
    let token: Token;
    try {
      token = bytesOrToken instanceof Uint8Array ? decodeToken(bytesOrToken) : bytesOrToken;
    } catch (e) {
      return { ok: false, code: (e as TokenError).code ?? "MALFORMED", message: (e as Error).message };
    }
    // Named in refusals by the id it claims: unverified, but what the presenter asserted.
    const claimed = derivedTokenId(token);
    const key = this.keys.get(token.claims.kid);
    if (!key) return { ok: false, code: "UNKNOWN_KEY", message: "token was signed with an unknown or retired key", id: claimed };
    const expected = expectedSignature(key, token);
    if (!timingSafeEqual(expected, Buffer.from(token.sig)))
      return { ok: false, code: "BAD_SIGNATURE", message: "token signature is invalid", id: claimed };
    const grant = effectiveGrant(token);
    if (cacheKey !== undefined) {
      if (this.verified.size >= CACHE_ENTRIES.verifiedTokens) this.verified.delete(this.verified.keys().next().value as string);
      this.verified.set(cacheKey, { token, grant });
    }
    const why = this.unusable(grant, persona);
    if (why) return { ok: false, code: why.code, message: why.message, id: tokenRef(grant) };
    return { ok: true, token, grant };
  }

  /**
   * The first use in this run of a token attenuated offline goes on the record (bounded memory):
   * when it is bound, or authorizes a request inline — never for a refused one, so a refusal
   * flood of fresh derived tokens adds no records past the refusal limiter.
   */
  private noteDerived(token: Token, grant: Grant, persona: string, session: string | undefined): void {
    if (this.revoked.firstUse(grant)) this.onDerived?.(token, grant, persona, session);
  }

  /** Drops the cache of verified tokens (benchmarks measure the cold path with it). */
  forgetVerified(): void {
    this.verified.clear();
  }

  /** Live checks repeated on every use of a handle: revocation, time, subject. */
  private unusable(g: Grant, persona: string): { code: string; message: string } | undefined {
    const ref = tokenRef(g);
    if (this.revoked.covers(g)) return { code: "REVOKED", message: this.revoked.message(g) };
    const now = this.clock();
    if (now >= g.exp) return { code: "EXPIRED", message: `token ${ref} expired at ${new Date(g.exp).toISOString()}` };
    if (now < g.nbf)
      return { code: "NOT_YET_VALID", message: `token ${ref} is not valid before ${new Date(g.nbf).toISOString()}` };
    if (!g.usable || !personaWithin(persona, g.subject)) {
      return { code: "WRONG_PERSONA", message: `token ${ref} is not usable by persona ${persona}` };
    }
    return undefined;
  }

  /** Notes where a revocation is on the audit record, for the messages of the refusals it causes. */
  noteRevokeRecord(id: string, seq: number): void {
    this.revoked.noteRecord(id, seq);
  }

  /** Binds a token to a session's handle table. */
  bind(
    table: HandleTable,
    persona: string,
    bytes: Uint8Array,
    session?: string,
  ): { handle: number; id: string } | { code: string; message: string; id?: string } {
    if (table.size >= MAX_HANDLES_PER_SESSION)
      return { code: "TOO_MANY_HANDLES", message: `a session may hold at most ${MAX_HANDLES_PER_SESSION} handles` };
    const budget = SESSION_TOKEN_BYTES_IN_TOKENS * this.limits.maxTokenBytes;
    if (table.bytes + bytes.length > budget)
      return { code: "TOO_LARGE", message: `a session may bind at most ${budget} bytes of tokens` };
    const v = this.verify(bytes, persona);
    if (!v.ok) return v;
    this.noteDerived(v.token, v.grant, persona, session);
    table.bytes += bytes.length;
    return { handle: table.add(v.token, v.grant), id: tokenRef(v.grant) };
  }

  authorize(req: AuthorizationRequest): Decision {
    if (req.caps.length === 0) {
      return {
        allowed: false,
        errorClass: "CAPABILITY",
        message: "the request names no capability (no ambient authority)",
        capIds: [],
      };
    }
    if (req.caps.filter((c) => typeof c !== "number").length > MAX_INLINE_TOKENS) {
      return {
        allowed: false,
        errorClass: "CAPABILITY",
        message: `a request may carry at most ${MAX_INLINE_TOKENS} inline tokens (bind the others: token.bind)`,
        capIds: [],
      };
    }
    const capIds: string[] = [];
    let firstProblem: string | undefined;
    let anyValid = false;
    for (const ref of req.caps) {
      let grant: Grant;
      let inline: Token | undefined;
      let decisions: Map<string, boolean> | undefined;
      if (typeof ref === "number") {
        const b = req.handles?.get(ref);
        if (!b) {
          firstProblem ??= `handle ${ref} is not bound on this session`;
          continue;
        }
        const why = this.unusable(b.grant, req.persona);
        if (why) {
          capIds.push(`h${ref}:${tokenRef(b.grant)}`);
          firstProblem ??= why.message;
          continue;
        }
        grant = b.grant;
        decisions = b.decisions;
        capIds.push(`h${ref}:${tokenRef(grant)}`);
      } else {
        const v = this.verify(ref, req.persona);
        if (!v.ok) {
          // A refused inline token is named too, when it decoded: the record says which it was.
          if (v.id !== undefined) capIds.push(`inline:${v.id}`);
          firstProblem ??= v.message;
          continue;
        }
        grant = v.grant;
        inline = v.token;
        capIds.push(`inline:${tokenRef(grant)}`);
      }
      anyValid = true;
      let ok: boolean | undefined;
      if (decisions) {
        const key = `${req.intent.op}\0${req.intent.target}\0${req.context.workspace ?? ""}\0${req.context.domain ?? ""}`;
        ok = decisions.get(key);
        if (ok === undefined) {
          ok = this.allows(grant, req);
          // token.revoke's answer depends on the token store; never keep it.
          if (req.intent.op !== "token.revoke") {
            if (decisions.size >= DECISIONS_PER_HANDLE) decisions.clear();
            decisions.set(key, ok);
          }
        }
      } else ok = this.allows(grant, req);
      if (ok) {
        if (inline) this.noteDerived(inline, grant, req.persona, req.session);
        return { allowed: true, capIds, grant, rateKey: this.familyOf(grant) };
      }
    }
    if (!anyValid) return { allowed: false, errorClass: "CAPABILITY", message: firstProblem ?? "no usable capability", capIds };
    return {
      allowed: false,
      errorClass: "PERMISSION",
      message: `no capability of this request grants ${req.intent.op} on ${req.intent.target}`,
      capIds,
    };
  }

  private allows(g: Grant, req: AuthorizationRequest): boolean {
    const { target } = req.intent;
    const op = req.declaration?.authorizeAs ?? req.intent.op;
    const ws = req.context.workspace;
    if (g.workspaces) {
      if (ws !== undefined && !g.workspaces.includes(ws)) return false;
      if (target.startsWith("obj://")) {
        const tws = target.slice(6).split("/")[0] as string;
        if (!g.workspaces.includes(tws)) return false;
      }
    }
    if (g.domains && (req.context.domain === undefined || !g.domains.includes(req.context.domain))) return false;
    if (compiledAllows(compileGrant(g), op, target)) return true;
    if (SELF_OPS.has(op) && target.startsWith("token://")) {
      const id = target.slice(8);
      if (id === g.id || id === g.derived) return true;
      // A holder may revoke what was minted from its token.
      if (op === "token.revoke") return this.store.getToken(id)?.chain.includes(g.id) ?? false;
    }
    return false;
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
      family: claims.id,
    });
    return token;
  }

  /** The live-token bound: a persona cannot grow the token table without end (RESOURCE). */
  private checkLiveTokens(mintedBy: string, now: number): void {
    if (this.limits.exempt.includes(mintedBy)) return;
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
      if (this.live.size > CACHE_ENTRIES.liveTokenCounts) this.live.delete(this.live.keys().next().value as string);
    }
    if (e.n >= this.limits.maxLiveTokens)
      throw new OpError(
        "RESOURCE",
        `${mintedBy} already has ${e.n} unexpired tokens it minted or refreshed, revoked ones included (maxLiveTokens ${this.limits.maxLiveTokens}); let some expire`,
      );
    // Counted now: the caller records the token next.
    e.n++;
  }

  /** The rate-limit key of a grant: its refresh family, so a refreshed copy shares the bucket. */
  familyOf(g: Grant): string {
    let f = this.families.get(g);
    if (f === undefined) {
      f = this.store.getToken(g.id)?.family ?? g.id;
      this.families.set(g, f);
    }
    return f;
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
    this.store.recordToken({
      id: claims.id,
      kid,
      sub: c.sub,
      chain: claims.chain,
      exp: claims.exp,
      mintedBy: by,
      createdAt: now,
      // A refreshed copy stays in its family: it shares the rate bucket (and the ledger's key).
      family: this.store.getToken(c.id)?.family ?? c.id,
    });
    return fresh;
  }

  /**
   * Revokes a token id (and so every token minted from it); effective at once for every handle.
   * Returns whether it was newly revoked and every token it ended ({@link Revocations.revoke}).
   */
  revoke(id: string, by: string): { changed: boolean; ended: string[] } {
    return this.revoked.revoke(id, by, this.clock());
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

  isRevoked(g: Grant): boolean {
    return this.revoked.covers(g);
  }
}

/** A mint that would widen rights, limits or lifetime. */
export class EscalationError extends Error {
  override name = "EscalationError";
}
