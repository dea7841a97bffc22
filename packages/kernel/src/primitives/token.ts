import {
  type CborMap,
  type CborValue,
  decodeToken,
  derivedTokenId,
  effectiveGrant,
  encodeToken,
  type Grant,
  isPersonaId,
  isWorkspaceId,
  personaWithin,
  type Right,
  type Token,
  type TokenError,
  tokenBind,
  tokenInspect,
  tokenList,
  tokenMint,
  tokenRefresh,
  tokenRevoke,
} from "@kpip/protocol";
import { tokenDetail } from "../audit/detail.js";
import { type CapEnforcer, tokenRef, type Verified } from "../auth/enforcer.js";
import type { TokenService } from "../auth/tokens.js";
import type { TokenRecord, TokenStore } from "../store/types.js";
import { implement } from "./implement.js";
import { pageAnswer, pageRequest } from "./paging.js";
import { PROCESS_CURSORS, type SeqCursors } from "./seq-cursor.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

function tokenArg(ctx: OpContext): Token {
  const b = ctx.args.token;
  if (!(b instanceof Uint8Array)) throw new OpError("SEMANTIC", `${ctx.op} needs argument token (bytes)`);
  try {
    return decodeToken(b);
  } catch (e) {
    throw new OpError("CAPABILITY", (e as TokenError).message);
  }
}

/**
 * Verifies the token argument as one the persona sent, as inline and bound tokens are: one not
 * seen before within its tree's budget of new token bytes (case 552), a seen one from the cache.
 * Call after {@link tokenArg}, which checked that it is bytes and decodes.
 */
function verifyArg(ctx: OpContext, enforcer: CapEnforcer): Verified {
  let v = verifiedArgs.get(ctx);
  if (v === undefined) {
    v = enforcer.verify(ctx.args.token as Uint8Array, ctx.persona, true);
    verifiedArgs.set(ctx, v);
  }
  return v;
}

/**
 * Each request's verification of its token argument, made once whatever asks (an op's ownership
 * rule, then its handler): a token that does not verify is never cached, so each verification of
 * it was charged again to the persona tree's budget of new token bytes.
 */
const verifiedArgs = new WeakMap<OpContext, Verified>();

function targetId(ctx: OpContext): string {
  const id = ctx.target.segments.join("/");
  if (!/^[0-9a-f]{32}$/.test(id)) throw new OpError("SEMANTIC", `${ctx.op} needs token://<token id>`);
  return id;
}

/** The token argument must be the one the target names: by its minted id, or its own (derived) id. */
function checkTarget(ctx: OpContext, t: Token): void {
  const id = targetId(ctx);
  if (t.claims.id !== id && derivedTokenId(t) !== id) throw new OpError("SEMANTIC", "the token does not match the target id");
}

/** The rights to mint (their shape is checked with the op's arguments): at least one, extra keys dropped. */
function rightsArg(v: readonly Right[]): Right[] {
  if (v.length === 0) throw new OpError("SEMANTIC", "rights must be a non-empty array of {ops, targets}");
  return v.map((r) => ({ ops: r.ops, targets: r.targets }));
}

/**
 * Tokens belong to the personas they were minted for or by, and to everyone up their chain — as
 * long as those ids are held by who held them then (a removal or an agent's end hands them up): a
 * capability over token://** lets a persona manage those, never another persona's tokens
 * (the admin manages all).
 */
function ownsToken(store: TokenStore, admin: string, persona: string, rec: TokenRecord | undefined, sub: string): boolean {
  if (persona === admin) return true;
  if (!rec) return personaWithin(sub, persona);
  // Who sees it: its subject, its minter and the subjects up its chain — one indexed lookup, not
  // a token read per chain id. Not the row's ids themselves: once one of them was removed (or an
  // agent of it ended) its place went to the persona above, never to a later holder of the id.
  return store.tokenSeenBy(rec.id, persona);
}

/** A verified token's grant as a use now would meet it. */
function grantStatus(g: Grant, enforcer: CapEnforcer, now: number): string {
  if (enforcer.isRevoked(g)) return "revoked";
  if (now >= g.exp) return "expired";
  return now < g.nbf ? "not-yet-valid" : "valid";
}

/**
 * Payload describing a token: claims, caveats, effective grant, status. `forged`: its signature did
 * not verify (unknown or retired key, bad signature): "invalid", whatever its claims say — they are
 * the presenter's, so neither "valid" nor an answer on whether the ids it names are revoked.
 */
export function describeToken(t: Token, enforcer: CapEnforcer, forged = false): CborMap {
  const g = effectiveGrant(t);
  // The enforcer's clock, not the host's: the status says what a use would meet.
  const now = enforcer.now();
  const status = forged ? "invalid" : grantStatus(g, enforcer, now);
  return {
    id: t.claims.id,
    claims: t.claims as unknown as CborMap,
    caveats: t.caveats as unknown as CborValue[],
    effective: {
      subject: g.subject,
      rights: g.rights as unknown as CborValue[],
      pairFilters: g.pairFilters as unknown as CborValue[],
      opFilters: g.opFilters,
      targetFilters: g.targetFilters,
      limits: g.limits,
      exp: g.exp,
      maxExp: g.maxExp,
      ...(g.workspaces ? { workspaces: g.workspaces } : {}),
      ...(g.domains ? { domains: g.domains } : {}),
      // Whether a request can pass it now: never a forged, revoked, expired or not-yet-valid one,
      // whatever its claims grant (a reader of this field alone was told they could).
      usable: g.usable && status === "valid",
    },
    status,
  };
}

/** token.mint / refresh / revoke / inspect / bind / list. Authorization and ownership happen in the pipeline; escalation is the token service's. */
export function tokenFamily(
  enforcer: CapEnforcer,
  tokens: TokenService,
  store: TokenStore,
  onRevoke: (id: string) => void = () => {},
  admin = "admin",
  cursors: SeqCursors = PROCESS_CURSORS,
): PrimitiveFamily {
  // Ownership rules (the pipeline evaluates them before the handler: handlers check no rights).
  const owned = (ctx: OpContext, id: string, sub: string | undefined): true | string => {
    const rec = store.getToken(id);
    return ownsToken(store, admin, ctx.persona, rec, sub ?? rec?.sub ?? "") || `token ${id} belongs to another persona`;
  };
  /** The token argument, matching the target, is the caller's (inspect). */
  const ownsArg = (ctx: OpContext): true | string => {
    const t = tokenArg(ctx);
    checkTarget(ctx, t);
    return owned(ctx, t.claims.id, t.claims.sub);
  };
  /** A token always allows these ops on itself (token://<its id>): presenting it is the right to inspect, bind, refresh or revoke it. */
  const itself = (g: Grant, target: string): boolean => {
    const id = target.startsWith("token://") ? target.slice(8) : undefined;
    return id !== undefined && (id === g.id || id === g.derived);
  };
  return {
    name: "token",
    ops: [
      implement(tokenMint, {
        // Only inside the minting token's subject's tree: the limits that token (and those it came
        // from) holds bound the new one there, and nowhere else (PROTOCOL §13). The admin mints for anyone.
        owns: (ctx) => {
          const sub = ctx.target.segments.join("/");
          const g = ctx.grant;
          if (ctx.persona === admin || !g || personaWithin(sub, g.subject)) return true;
          return `token.mint for ${sub}: outside the tree of ${g.subject}, the minting token's subject (only the admin mints for another persona's tree)`;
        },
        handler: (ctx) => {
          const sub = ctx.target.segments.join("/");
          if (!isPersonaId(sub)) throw new OpError("SEMANTIC", "token.mint needs persona://<persona id>");
          const limits = ctx.args.limits;
          if (limits && !Object.values(limits).every((v) => typeof v === "number"))
            throw new OpError("SEMANTIC", "limits must be integers");
          const workspaces = ctx.args.workspaces;
          if (workspaces && !workspaces.every((w) => typeof w === "string" && isWorkspaceId(w))) {
            throw new OpError("SEMANTIC", "workspaces must be workspace ids");
          }
          const ttlMs = ctx.args.ttlMs;
          if (ttlMs <= 0) throw new OpError("SEMANTIC", "ttlMs must be positive");
          // A token the format refuses (TokenError) is SEMANTIC, as wherever a token is made (pipeline/context.ts).
          // Recorded with the request's dedupe record: a retry after a crash gets this token, not a second one.
          return ctx.atomically((): OpResult => {
            const t = tokens.mint(ctx.grant, ctx.persona, {
              sub,
              rights: rightsArg(ctx.args.rights),
              ttlMs,
              ...(limits ? { limits } : {}),
              ...(ctx.args.maxLifetimeMs !== undefined ? { maxLifetimeMs: ctx.args.maxLifetimeMs } : {}),
              ...(workspaces ? { workspaces } : {}),
              ...(ctx.args.domains ? { domains: ctx.args.domains } : {}),
            });
            return {
              status: "SUCCESS",
              payload: { token: encodeToken(t), id: t.claims.id, exp: t.claims.exp },
              audit: { token: tokenDetail(t, undefined, ctx.grant ? tokenRef(ctx.grant) : undefined) },
            };
          });
        },
      }),
      implement(tokenRefresh, {
        impliedBy: itself,
        owns: (ctx) => {
          const t = tokenArg(ctx);
          checkTarget(ctx, t);
          const v = verifyArg(ctx, enforcer);
          // Not verified at all (past the tree's budget of new token bytes): no telling whose it is,
          // and "another persona's" would be a wrong answer; the budget's refusal is the answer.
          if (!v.ok && v.code === "TOO_MANY_NEW_TOKENS") throw new OpError("CAPABILITY", v.message);
          // A token narrowed (a sub caveat) to the caller or below is the caller's to refresh: the
          // copy keeps every caveat, so it is never wider, nor longer-lived than the chain's maxExp.
          const delegated = v.ok && v.grant.subject !== t.claims.sub && personaWithin(v.grant.subject, ctx.persona);
          return delegated || owned(ctx, t.claims.id, t.claims.sub);
        },
        handler: (ctx) => {
          const t = tokenArg(ctx);
          const v = verifyArg(ctx, enforcer);
          if (!v.ok) throw new OpError("CAPABILITY", v.message);
          if (enforcer.now() >= v.grant.maxExp) throw new OpError("CAPABILITY", "the token is past its maximum lifetime");
          // Recorded with the request's dedupe record: a retry after a crash gets this copy, not a second one.
          return ctx.atomically((): OpResult => {
            const fresh = tokens.refresh(t, ctx.persona);
            const g = effectiveGrant(fresh);
            return {
              status: "SUCCESS",
              payload: { token: encodeToken(fresh), id: fresh.claims.id, exp: g.exp },
              audit: { token: tokenDetail(fresh, g, tokenRef(v.grant)) },
            };
          });
        },
      }),
      implement(tokenRevoke, {
        // A holder may also revoke what was minted from its token. Not through a copy with caveats:
        // revocation names the minted id, so a copy narrowed to `storage.read` (handed to a part
        // of a persona it confines, a gateway) would end the token it was narrowed from and all
        // minted from it; such a copy revokes only as its rights allow (token.revoke granted).
        impliedBy: (g, target) =>
          g.derived === undefined &&
          (itself(g, target) ||
            (target.startsWith("token://") && (store.getToken(target.slice(8))?.chain.includes(g.id) ?? false))),
        owns: (ctx) => owned(ctx, targetId(ctx), undefined),
        handler: (ctx) => {
          const id = targetId(ctx);
          // After the ownership check, so only those who could own any token learn that an id is unknown.
          if (!store.getToken(id)) throw new OpError("SEMANTIC", `no token ${id} was ever minted here`);
          // Recorded with the request's dedupe record: a retry after a crash gets this answer, not "already".
          // Its refresh family ends with it (every copy, and what was minted from any): a copy is the
          // same authority. Only when the caller owns the copy the family started from too: a
          // delegate who refreshed the token attenuated for it ends its own copies alone, never its
          // delegator's token.
          const root = store.getToken(id)?.copyOf;
          const family = root === undefined || root === id || owned(ctx, root, undefined) === true;
          let changed = false;
          const result = ctx.atomically((): OpResult => {
            const r = tokens.revoke(id, ctx.persona, family);
            changed = r.changed;
            return {
              status: "SUCCESS",
              payload: { id, revoked: true, already: !r.changed },
              audit: { revoked: id, ended: r.ended, ...(r.root ? { family: r.root } : {}) },
              // Refusals the revocation causes name this record.
              ...(r.changed ? { revoked: r.root ? [id, r.root] : [id] } : {}),
            };
          });
          // Only a revocation that changed something ends sessions' handles and subscriptions: the
          // fan-out visits every session (and every agent and op), and revoking an already revoked
          // token again (idempotent, allowed to its holder) must not make a persona able to run it at will.
          if (changed) onRevoke(id);
          return result;
        },
      }),
      implement(tokenInspect, {
        impliedBy: itself,
        owns: ownsArg,
        handler: (ctx) => {
          const t = tokenArg(ctx);
          const v = verifyArg(ctx, enforcer);
          // Not verified at all: no status to tell (the claims alone would read "valid").
          if (!v.ok && v.code === "TOO_MANY_NEW_TOKENS") throw new OpError("CAPABILITY", v.message);
          const d = describeToken(t, enforcer, !v.ok && v.unverified === true);
          if (!v.ok) d.problem = v.message;
          return { status: "SUCCESS", payload: d };
        },
      }),
      implement(tokenBind, {
        impliedBy: itself,
        handler: (ctx) => {
          if (!ctx.handles) throw new OpError("INTERNAL", "this session cannot hold handles");
          const t = tokenArg(ctx);
          checkTarget(ctx, t);
          const r = enforcer.bind(ctx.handles, ctx.persona, ctx.args.token, ctx.session);
          if ("code" in r) throw new OpError("CAPABILITY", r.message);
          return { status: "SUCCESS", payload: { handle: r.handle }, audit: { handle: r.handle, token: r.id } };
        },
      }),
      implement(tokenList, {
        owns: (ctx) => {
          const only = ctx.args.persona as string | undefined;
          if (only === undefined || ctx.persona === admin || personaWithin(only, ctx.persona)) return true;
          return `the tokens of ${only} belong to another persona`;
        },
        handler: (ctx) => {
          const only = ctx.args.persona;
          const page = pageRequest(ctx.args, "a token list", cursors);
          // Only the rows the caller sees are read: a page is the caller's tokens, whatever other
          // personas hold or mint meanwhile (their rows neither cost the page nor show in it).
          const rows =
            ctx.persona === admin
              ? store.listTokens(only, page.after, page.limit + 1)
              : store.listTokensSeenBy(ctx.persona, only, page.after ?? 0, page.limit + 1);
          return pageAnswer(
            rows,
            page,
            "tokens",
            (r) => ({
              id: r.id,
              sub: r.sub,
              chain: r.chain,
              exp: r.exp,
              mintedBy: r.mintedBy,
              createdAt: r.createdAt,
              ...(r.revokedAt !== null ? { revokedAt: r.revokedAt } : {}),
            }),
            (r) => page.seal(r.seq ?? 0),
          );
        },
      }),
    ],
  };
}
