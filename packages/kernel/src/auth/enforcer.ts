import { timingSafeEqual } from "node:crypto";
import {
  authorizationTarget,
  compiledAllows,
  compileGrant,
  copyOwn,
  decodeToken,
  derivedTokenId,
  effectiveGrant,
  expectedSignature,
  type Grant,
  personaWithin,
  type Token,
  type TokenError,
} from "@kpip/protocol";
import { innermostAgent } from "../agents/namespace.js";
import { RateBuckets } from "../audit/rate-buckets.js";
import { CACHE_ENTRIES, MAX_HANDLES_PER_SESSION, VERIFIED_TOKENS_TREE_SHARE } from "../limits.js";
import { FIRST_SEGMENT, GrantBounds, type TreeRoots } from "../resources/lineage.js";
import type { BoundCapability, HandleTable } from "../session/handles.js";
import type { TokenStore } from "../store/types.js";
import type { AuthorizationRequest, Authorizer, Decision } from "./authorizer.js";
import type { RootKeys } from "./keys.js";
import { type Revocations, tokenRef } from "./revocations.js";
import { TreeSharedFifo } from "./tree-shared-fifo.js";

export { type BoundCapability, HandleTable } from "../session/handles.js";
export { tokenRef };

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

/**
 * Bytes of cached decisions per session, all its handles together (each a target key of up to
 * ~2 KiB and {@link DECISION_OVERHEAD_BYTES}): a cache keyed by request fields must not grow with
 * them. The one bound: at least 64 bytes each, so at most ~4,000 decisions a session, however its
 * handles share them (a per-handle count of 1,024 bounded nothing this does not: 256 handles × 1,024
 * decisions of 2 KiB targets kept ~550 MB for one session before this bound).
 */
const DECISION_BYTES_PER_SESSION = 256 * 1024;
/** What a cached decision costs besides its key's characters (map slots, the entry). */
const DECISION_OVERHEAD_BYTES = 64;
/** Inline tokens one request may carry: each unseen one costs a full verification (~0.2 µs a byte). */
export const MAX_INLINE_TOKENS = 4;
/** Token bytes one session may bind, in tokens of `maxTokenBytes`: what its verifications may cost in all. */
const SESSION_TOKEN_BYTES_IN_TOKENS = 16;
/**
 * Bytes of tokens never seen before (inline, attested or bound) that one persona tree may have
 * verified per second (bursts 5×), in tokens of `maxTokenBytes`. A persona attenuates its token
 * offline without end: four fresh 8 KiB inline tokens a request, or sixteen at each ATTEST of
 * sessions opened and closed, each a full verification (~1–2 ms) before any `rate` is known.
 */
const NEW_TOKEN_BYTES_PER_SECOND_IN_TOKENS = 16;

/** A refusal names the token when it decoded (its own id: {@link tokenRef}), so the record can. */
export type Verified =
  | { ok: true; token: Token; grant: Grant }
  /** `unverified`: the signature was not checked good (unknown key, bad signature): `id` is only what the token claims. */
  | { ok: false; code: string; message: string; id?: string; unverified?: true };

/** A token attenuated offline, the first time this kernel run sees it used (for its audit record). */
export type DerivedUse = (token: Token, grant: Grant, persona: string, session: string | undefined) => void;

/**
 * The capability enforcer (the bridge's CapEnforcer), the decision side of capabilities:
 * verifies tokens by recomputing their HMAC chain, binds them to handles, and decides every
 * request against the handles and inline tokens it names. No ambient authority: a request
 * naming no usable capability is refused. CAPABILITY = missing, malformed, expired, revoked, or
 * not this persona's; PERMISSION = a valid capability that does not grant this op on this target.
 * Tokens are issued and revoked by the token service (auth/tokens.ts), which shares its
 * revocations; a custom {@link Authorizer} replaces `authorize` only.
 */
export class CapEnforcer implements Authorizer {
  /**
   * Tokens already verified, by their exact bytes: the chain check is pure, so it is done once.
   * Bounded in number and in bytes (the keys' lengths: an entry's decoded token, grant and compiled
   * patterns take ~15× its bytes), a persona tree holding at most its share
   * ({@link VERIFIED_TOKENS_TREE_SHARE}) of either.
   */
  private readonly verified = new TreeSharedFifo<{ token: Token; grant: Grant }>(
    CACHE_ENTRIES.verifiedTokens,
    CACHE_ENTRIES.verifiedTokenBytes,
    VERIFIED_TOKENS_TREE_SHARE,
  );
  /**
   * The root key each verified grant's token was signed with: a handle's grant (and a
   * subscription's) is checked against key retirement on every use, as an inline token is.
   */
  private readonly kids = new WeakMap<Grant, string>();
  /**
   * Verified grants whose `sub` caveats narrowed them, offline, into an agent persona their token
   * was not minted within: usable by no one (see {@link unusable}).
   */
  private readonly narrowedIntoAgent = new WeakMap<Grant, string>();
  /** Called the first time a derived token is used in this run (set by the kernel: a `token.derived` record). */
  onDerived: DerivedUse | undefined;
  /** Bytes of new tokens verified, per persona tree ({@link NEW_TOKEN_BYTES_PER_SECOND_IN_TOKENS}). */
  private readonly newTokenBytes = new RateBuckets(() => NEW_TOKEN_BYTES_PER_SECOND_IN_TOKENS * this.limits.maxTokenBytes);

  constructor(
    private readonly keys: RootKeys,
    store: TokenStore,
    private readonly revoked: Revocations,
    private readonly clock: () => number = Date.now,
    readonly limits: EnforcerLimits = DEFAULT_ENFORCER_LIMITS,
    /** Each grant's token row (its rate family and bounds), read once and shared with the ledger. */
    readonly grantBounds: GrantBounds = new GrantBounds(store),
    /** The top of each persona's tree: new tokens a persona sends are verified within a budget per tree. */
    private readonly roots: TreeRoots = FIRST_SEGMENT,
  ) {}

  /**
   * Verifies a token for use by `persona` now. `sent`: the persona sent it to be used (inline,
   * at ATTEST, by token.bind), so a token not seen before is verified only within its persona
   * tree's budget of new token bytes.
   */
  verify(bytesOrToken: Uint8Array | Token, persona: string, sent = false): Verified {
    // Bounded before any work: a token's checks and its compiled patterns grow with its size.
    if (bytesOrToken instanceof Uint8Array && bytesOrToken.length > this.limits.maxTokenBytes) {
      return {
        ok: false,
        code: "TOO_LARGE",
        message: `token is ${bytesOrToken.length} bytes; the kernel accepts tokens of at most ${this.limits.maxTokenBytes} bytes`,
      };
    }
    const cacheKey = bytesOrToken instanceof Uint8Array ? latin1Key(bytesOrToken) : undefined;
    const hit = cacheKey === undefined ? undefined : this.verified.get(cacheKey);
    if (hit) {
      // Key retirement, time, revocation and subject are live facts: checked on every use, never cached.
      const why = this.unusable(hit.grant, persona);
      if (why) return { ok: false, ...why, id: tokenRef(hit.grant) };
      return { ok: true, token: hit.token, grant: hit.grant };
    }
    if (sent && bytesOrToken instanceof Uint8Array && !this.takeNewTokenBytes(persona, bytesOrToken.length)) {
      const rate = NEW_TOKEN_BYTES_PER_SECOND_IN_TOKENS * this.limits.maxTokenBytes;
      return {
        ok: false,
        code: "TOO_MANY_NEW_TOKENS",
        message: `persona ${persona}'s tree sent more than ${rate} bytes of tokens not seen before a second: use the tokens it holds (a handle, or the same bytes again)`,
      };
    }
    let token: Token;
    try {
      // Decoded from its own copy: the token's byte strings are views of what they were decoded
      // from, and a token sent inline is a view of its request's whole body (up to maxBody), which
      // the verified cache would otherwise keep alive for as long as it keeps the token; out of the
      // shared pool too, whose 8 KiB slab a small cached token would keep.
      token = bytesOrToken instanceof Uint8Array ? decodeToken(copyOwn(bytesOrToken, true) as Buffer) : bytesOrToken;
    } catch (e) {
      return { ok: false, code: (e as TokenError).code ?? "MALFORMED", message: (e as Error).message };
    }
    // Named in refusals by the id it claims: unverified, but what the presenter asserted.
    const claimed = derivedTokenId(token);
    const key = this.keys.get(token.claims.kid);
    if (!key)
      return {
        ok: false,
        code: "UNKNOWN_KEY",
        message: "token was signed with an unknown or retired key",
        id: claimed,
        unverified: true,
      };
    const expected = expectedSignature(key, token);
    if (!timingSafeEqual(expected, Buffer.from(token.sig)))
      return { ok: false, code: "BAD_SIGNATURE", message: "token signature is invalid", id: claimed, unverified: true };
    const grant = effectiveGrant(token);
    this.kids.set(grant, token.claims.kid);
    const agent = innermostAgent(grant.subject);
    if (agent !== undefined && agent !== innermostAgent(token.claims.sub)) this.narrowedIntoAgent.set(grant, agent);
    if (cacheKey !== undefined) this.cacheVerified(cacheKey, token, grant, persona);
    const why = this.unusable(grant, persona);
    if (why) return { ok: false, code: why.code, message: why.message, id: tokenRef(grant) };
    return { ok: true, token, grant };
  }

  /** The kernel's clock, which every expiry here is judged by: what reports a token's status reads it too, never the host's. */
  now(): number {
    return this.clock();
  }

  /** Takes `n` bytes from the budget of new tokens of `persona`'s tree; false when it has not that many. */
  private takeNewTokenBytes(persona: string, n: number): boolean {
    const b = this.newTokenBytes.take(this.roots.of(persona), this.clock());
    if (b.tokens < n) return false;
    b.tokens -= n;
    return true;
  }

  /**
   * The first use in this run of a token attenuated offline goes on the record (bounded memory):
   * when it is bound, or authorizes a request inline — never for a refused one, so a refusal
   * flood of fresh derived tokens adds no records past the refusal limiter.
   */
  private noteDerived(token: Token, grant: Grant, persona: string, session: string | undefined): void {
    if (this.revoked.firstUse(grant, this.roots.of(persona))) this.onDerived?.(token, grant, persona, session);
  }

  /**
   * Caches a verified token, first forgetting the oldest entries past the cache's bound in
   * entries or in bytes: fresh attenuations near `maxTokenBytes` (inline, bound, or only
   * inspected) would otherwise keep ~100 KB of heap each, 4,096 of them ~400 MB for good. A
   * persona tree at its share forgets its own oldest first, so one tree's fresh tokens never push
   * out more of other trees' than the share it grows into. Only a miss (a full verification) comes here.
   */
  private cacheVerified(key: string, token: Token, grant: Grant, persona: string): void {
    this.verified.add(key, { token, grant }, this.roots.of(persona), key.length);
  }

  /** The cache of verified tokens: its entries and their bytes (tests). */
  get verifiedCache(): { entries: number; bytes: number } {
    return { entries: this.verified.size, bytes: this.verified.weight };
  }

  /** Drops the cache of verified tokens (benchmarks measure the cold path with it). */
  forgetVerified(): void {
    this.verified.clear();
  }

  /**
   * Why a capability that authorized something lasting (a subscription, a watch) no longer holds
   * — revoked (itself or an ancestor) or past its expiry — or undefined while it holds: the first
   * two of the live checks every use of a handle makes ({@link unusable}).
   */
  lapsed(g: Grant, what = "subscription"): string | undefined {
    const why = this.revokedOrExpired(g, this.clock());
    if (why === undefined) return undefined;
    const how = why === "REVOKED" ? "was revoked" : why === "EXPIRED" ? "expired" : "was signed with a retired key";
    return `the capability ${g.id} that authorized this ${what} ${how}`;
  }

  /**
   * Whether `g` was verified from a token signed with a key since retired (a grant the enforcer
   * never verified is not known here: false): what runs under it — a command, a task — ends too,
   * as for a revocation (the housekeeping asks).
   */
  keyRetired(g: Grant): boolean {
    const kid = this.kids.get(g);
    return kid !== undefined && this.kidRetired(kid);
  }

  /** The key id of the token `g` was verified from (undefined: a grant the enforcer never verified). */
  kidOf(g: Grant): string | undefined {
    return this.kids.get(g);
  }

  /** Whether the key file marks `kid` retired (an agent's own token's key, say). */
  kidRetired(kid: string): boolean {
    return this.keys.retired(kid, this.clock());
  }

  private revokedOrExpired(g: Grant, now: number): "REVOKED" | "EXPIRED" | "UNKNOWN_KEY" | undefined {
    if (this.revoked.covers(g)) return "REVOKED";
    if (now >= g.exp) return "EXPIRED";
    // A key retired after the token was verified (a bound handle, a subscription) ends its use too.
    const kid = this.kids.get(g);
    if (kid !== undefined && !this.keys.usable(kid, now)) return "UNKNOWN_KEY";
    return undefined;
  }

  /** Live checks repeated on every use of a handle: revocation, time, subject. */
  private unusable(g: Grant, persona: string): { code: string; message: string } | undefined {
    const now = this.clock();
    const why = this.revokedOrExpired(g, now);
    if (why === "REVOKED") return { code: "REVOKED", message: this.revoked.message(g) };
    if (why === "EXPIRED")
      return { code: "EXPIRED", message: `token ${refusalRef(g)} expired at ${new Date(g.exp).toISOString()}` };
    if (why === "UNKNOWN_KEY") return { code: "UNKNOWN_KEY", message: `token ${refusalRef(g)} was signed with a retired key` };
    if (now < g.nbf)
      return { code: "NOT_YET_VALID", message: `token ${refusalRef(g)} is not valid before ${new Date(g.nbf).toISOString()}` };
    if (!g.usable || !personaWithin(persona, g.subject)) {
      return { code: "WRONG_PERSONA", message: `token ${refusalRef(g)} is not usable by persona ${persona}` };
    }
    // An agent's persona id is its name's, acted as by every later agent of the name, and a copy
    // narrowed offline is revoked only with the token it came from (which outlives the agent): it
    // would act for them all. What acts as an agent is minted for it, and ends with it.
    const agent = this.narrowedIntoAgent.get(g);
    if (agent !== undefined)
      return {
        code: "WRONG_PERSONA",
        message: `token ${refusalRef(g)} was narrowed offline to agent persona ${agent}, whose id later agents of its name reuse: only a token minted for it (token.mint, agent.spawn) acts as an agent`,
      };
    return undefined;
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
    const v = this.verify(bytes, persona, true);
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
    let inlineTokens = 0;
    for (const c of req.caps) if (typeof c !== "number") inlineTokens++;
    if (inlineTokens > MAX_INLINE_TOKENS) {
      return {
        allowed: false,
        errorClass: "CAPABILITY",
        message: `a request may carry at most ${MAX_INLINE_TOKENS} inline tokens (bind the others: token.bind)`,
        capIds: [],
      };
    }
    const capIds: string[] = [];
    let firstProblem: string | undefined;
    let firstValid: Grant | undefined;
    for (const ref of req.caps) {
      let grant: Grant;
      let inline: Token | undefined;
      let bound: BoundCapability | undefined;
      if (typeof ref === "number") {
        const b = req.handles?.get(ref);
        if (!b) {
          firstProblem ??= `handle ${ref} is not bound on this session`;
          continue;
        }
        const why = this.unusable(b.grant, req.persona);
        if (why) {
          capIds.push(handleLabel(b));
          firstProblem ??= why.message;
          continue;
        }
        grant = b.grant;
        bound = b;
      } else {
        const v = this.verify(ref, req.persona, true);
        if (!v.ok) {
          // A refused inline token is named too, when it decoded: the record says which it was. One
          // whose signature did not verify only claims its id (anyone can write any id into one):
          // named apart, so a persona cannot put another's token id on its records as presented.
          if (v.id !== undefined) capIds.push(`${v.unverified ? "unverified" : "inline"}:${v.id}`);
          firstProblem ??= v.message;
          continue;
        }
        grant = v.grant;
        inline = v.token;
        capIds.push(`inline:${tokenRef(grant)}`);
      }
      firstValid ??= grant;
      let ok: boolean | undefined;
      if (bound) {
        const decisions = bound.decisions;
        // By op, then by target (with the workspace and domain when the request names either): no
        // key string built for a request that names neither, the usual one.
        const { workspace: ws, domain } = req.context;
        const scope =
          ws === undefined && domain === undefined ? req.intent.target : `${req.intent.target}\0${ws ?? ""}\0${domain ?? ""}`;
        let byScope = decisions.get(req.intent.op);
        ok = byScope?.get(scope);
        if (ok === undefined) {
          ok = this.allows(grant, req);
          const table = req.handles as HandleTable;
          const cost = scope.length + DECISION_OVERHEAD_BYTES;
          if (table.decisionBytes + cost > DECISION_BYTES_PER_SESSION) {
            table.forgetDecisions();
            byScope = undefined;
          }
          if (byScope === undefined) {
            byScope = new Map();
            decisions.set(req.intent.op, byScope);
          }
          byScope.set(scope, ok);
          table.decisionBytes += cost;
        }
      } else ok = this.allows(grant, req);
      // The op's own implied rule is asked every time, never kept: its answer may depend on the store.
      if (!ok) ok = this.implied(grant, req);
      // A handle's label goes in after its decision: a handle that allows on its own (the usual
      // request) gets the decision it always gets, made once per binding, with no array built.
      if (ok && bound !== undefined && capIds.length === 0) {
        bound.allows ??= Object.freeze({
          allowed: true,
          capIds: Object.freeze([handleLabel(bound)]) as string[],
          grant,
          rateKey: this.familyOf(grant),
        });
        return bound.allows;
      }
      if (bound !== undefined) capIds.push(handleLabel(bound));
      if (ok) {
        if (inline) this.noteDerived(inline, grant, req.persona, req.session);
        return { allowed: true, capIds, grant, rateKey: this.familyOf(grant) };
      }
    }
    if (!firstValid) return { allowed: false, errorClass: "CAPABILITY", message: firstProblem ?? "no usable capability", capIds };
    const { op, target } = req.intent;
    const over = authorizationTarget(req.declaration, target);
    return {
      allowed: false,
      errorClass: "PERMISSION",
      message:
        over === target
          ? `no capability of this request grants ${op} on ${target}`
          : `no capability of this request grants ${op} on ${target}: it reaches everything under it, so a grant must cover ${over}`,
      capIds,
      grant: firstValid,
      rateKey: this.familyOf(firstValid),
    };
  }

  /**
   * The grant's patterns allow the op (or the act it is a step of) on the target — on all of the
   * subtree under it, for an op that reaches it (a listing: `reach`) — within its scope.
   */
  private allows(g: Grant, req: AuthorizationRequest): boolean {
    const d = req.declaration;
    const op = d?.authorizeAs ?? req.intent.op;
    return this.inScope(g, req) && compiledAllows(compileGrant(g), op, authorizationTarget(d, req.intent.target));
  }

  /** The op's declaration says the grant allows it anyway (a token over itself: `impliedBy`), within its scope. */
  private implied(g: Grant, req: AuthorizationRequest): boolean {
    const rule = req.declaration?.impliedBy;
    return rule !== undefined && this.inScope(g, req) && rule(g, req.intent.target);
  }

  /** The request's workspace and domain, and an obj:// target's workspace, are within the grant's. */
  private inScope(g: Grant, req: AuthorizationRequest): boolean {
    const { target } = req.intent;
    const ws = req.context.workspace;
    if (g.workspaces) {
      if (ws !== undefined && !g.workspaces.includes(ws)) return false;
      if (target.startsWith("obj://")) {
        const tws = target.slice(6).split("/")[0] as string;
        if (!g.workspaces.includes(tws)) return false;
      }
    }
    return !(g.domains && (req.context.domain === undefined || !g.domains.includes(req.context.domain)));
  }

  /** The rate-limit key of a grant: its refresh family, so a refreshed copy shares the bucket. */
  familyOf(g: Grant): string {
    return this.grantBounds.family(g);
  }

  isRevoked(g: Grant): boolean {
    return this.revoked.covers(g);
  }
}

/**
 * How a refusal names a grant's token. A copy narrowed offline has an id no table holds (a hash of
 * its caveats): its refusal names the token it came from too, or a responder could not tell whose
 * token was handed on (PROTOCOL §13.1 "Token ids"). Built only when refusing: a handle's every use asks.
 */
function refusalRef(g: Grant): string {
  return g.derived === undefined ? g.id : `${g.derived} (narrowed offline from token ${g.id})`;
}

/** How records name a bound handle: its number and its token (made once per binding). */
function handleLabel(b: BoundCapability): string {
  b.label ??= `h${b.handle}:${tokenRef(b.grant)}`;
  return b.label;
}

/**
 * The verified-token cache's key for a token's bytes: a char per byte. Read through a view of
 * the bytes where they lie (a request's decoded token is a Uint8Array view of its frame): the
 * `Buffer.from(bytes)` it was made with copied every inline token on every request first.
 */
function latin1Key(b: Uint8Array): string {
  return (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)).toString("latin1");
}
