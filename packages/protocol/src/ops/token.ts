import { defineOp, type FieldSpec } from "./define.js";

/* token.* — capabilities as objects: mint, refresh, revoke, inspect, bind, list (PROTOCOL §13). */

const texts = (description: string, item: string) =>
  ({ type: "array", items: { type: "text", description: item }, description }) as const;

/** The rights a new token (or an agent's) carries: [{ops, targets}]. */
export const rightsField = {
  type: "array",
  required: true,
  description: "[{ops: [op patterns], targets: [target patterns]}]",
  items: {
    type: "map",
    description: "a right",
    fields: {
      ops: { ...texts("op patterns", "an op pattern"), required: true },
      targets: { ...texts("target patterns", "a target pattern"), required: true },
    },
  },
} as const satisfies FieldSpec;

/** Named limits: limit name → unsigned integer. */
export const limitsField = {
  type: "map",
  description: "limit name → unsigned integer",
  values: { type: "uint", description: "the limit" },
} as const satisfies FieldSpec;

const tokenArg = { type: "bytes", required: true, description: "the token" } as const satisfies FieldSpec;
const issued = {
  token: { type: "bytes", required: true, description: "the token (§13.1)" },
  id: { type: "text", required: true, description: "its id" },
  exp: { type: "uint", required: true, description: "its expiry, ms since the epoch" },
} as const;

export const tokenMint = defineOp({
  op: "token.mint",
  description:
    "Derive a token for persona://<sub> within the authorizing token's grant (never wider); <sub> is that token's subject or a persona under it (PERMISSION otherwise; the admin mints for anyone).",
  targets: ["persona"],
  args: {
    rights: rightsField,
    limits: limitsField,
    ttlMs: { type: "uint", required: true, description: "lifetime from now, in ms" },
    maxLifetimeMs: { type: "uint", description: "how far refresh may extend it, from now, in ms (default: ttl)" },
    workspaces: texts("workspaces it may act in", "a workspace id"),
    domains: texts("security domains it may act in", "a domain"),
  },
  result: issued,
  idempotent: false,
  effects: true,
});

export const tokenRefresh = defineOp({
  op: "token.refresh",
  description: "A fresh copy of a token with a later expiry, never past its maximum lifetime.",
  targets: ["token"],
  args: { token: { ...tokenArg, description: "the token to refresh" } },
  result: { ...issued, token: { ...issued.token, description: "the fresh token (§13.1 Minting and refresh)" } },
  idempotent: false,
  effects: true,
});

export const tokenRevoke = defineOp({
  op: "token.revoke",
  description:
    "Revoke a token, its refresh family (every copy refreshed from the token it was refreshed from) and every token derived from any of them, persistently and at once; the agents and ops running under them end (§13.1).",
  targets: ["token"],
  args: {},
  result: {
    id: { type: "text", required: true, description: "the token id revoked" },
    revoked: { type: "bool", required: true, description: "true" },
    already: { type: "bool", required: true, description: "it was revoked before" },
  },
  idempotent: true,
  effects: true,
});

/** Caveats' lists, one per caveat: a request must pass each. */
const filters = <I extends FieldSpec>(description: string, item: I) =>
  ({
    type: "array",
    required: true,
    description,
    items: { type: "array", description: "one caveat's list", items: item },
  }) as const;

export const tokenInspect = defineOp({
  op: "token.inspect",
  description: "Claims, caveats, effective grant and status of a token.",
  targets: ["token"],
  args: { token: tokenArg },
  result: {
    id: { type: "text", required: true, description: "the token id" },
    claims: { type: "map", required: true, description: "its claims (§13.1)" },
    caveats: { type: "array", required: true, description: "its caveats, in order" },
    effective: {
      type: "map",
      required: true,
      description: "the grant it amounts to, caveats applied",
      fields: {
        subject: { type: "text", required: true, description: "the persona it acts as" },
        rights: { ...rightsField, description: "the minted rights" },
        pairFilters: filters("(op, target) pairs rights caveats narrow to", rightsField.items),
        opFilters: filters("op patterns caveats narrow to", { type: "text", description: "an op pattern" }),
        targetFilters: filters("target patterns caveats narrow to", { type: "text", description: "a target pattern" }),
        limits: { ...limitsField, required: true },
        exp: { type: "uint", required: true, description: "expiry, ms since the epoch" },
        maxExp: { type: "uint", required: true, description: "how far refresh may extend it" },
        workspaces: texts("workspaces it may act in", "a workspace id"),
        domains: texts("security domains it may act in", "a domain"),
        usable: {
          type: "bool",
          required: true,
          description:
            "whether a request can pass it now: only when `status` is valid (never for a forged, revoked, expired or not-yet-valid token) and its caveats leave it usable",
        },
      },
    },
    status: {
      type: "text",
      required: true,
      description:
        "valid, expired, not-yet-valid, revoked, or invalid (its signature does not verify: unknown or retired key, or forged)",
    },
    problem: { type: "text", description: "why the kernel would refuse it, if it would" },
  },
  idempotent: true,
  effects: false,
});

export const tokenBind = defineOp({
  op: "token.bind",
  description: "Bind a token to this session; later requests name the returned handle.",
  targets: ["token"],
  sessionState: "a handle: the token's authority, for every later request of the session",
  args: { token: tokenArg },
  result: { handle: { type: "uint", required: true, description: "usable in `caps` on this session only" } },
  idempotent: false,
  effects: false,
});

export const tokenList = defineOp({
  op: "token.list",
  description:
    "Tokens the kernel minted, optionally for one persona (args.persona): the caller's own and its sub-personas' (all, for the admin); PARTIAL with a cursor when more remain.",
  targets: ["kernel"],
  args: {
    persona: { type: "text", description: "only tokens for this persona" },
    cursor: { type: "text", description: "the cursor of the previous page" },
    limit: { type: "uint", description: "tokens per page (default 100, at most 1000)" },
  },
  result: {
    tokens: {
      type: "array",
      required: true,
      description: "tokens, oldest first",
      items: {
        type: "map",
        description: "a minted token",
        fields: {
          id: { type: "text", required: true, description: "its id" },
          sub: { type: "text", required: true, description: "the persona it was minted for" },
          chain: { ...texts("the ids of the tokens it was derived from", "a token id"), required: true },
          exp: { type: "uint", required: true, description: "its expiry" },
          mintedBy: { type: "text", required: true, description: "the persona that minted it" },
          createdAt: { type: "uint", required: true, description: "when, ms since the epoch" },
          revokedAt: { type: "uint", description: "when it was revoked" },
        },
      },
    },
    cursor: { type: "text", description: "PARTIAL: pass it to get the next page" },
  },
  answers: { PARTIAL: "more tokens remain: the payload's `cursor` asks for the next page" },
  idempotent: true,
  effects: false,
});

export const tokenOps = [tokenMint, tokenRefresh, tokenRevoke, tokenInspect, tokenBind, tokenList] as const;
