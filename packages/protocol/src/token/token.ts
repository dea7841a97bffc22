import { createHash, createHmac } from "node:crypto";
import { decodeCanonical } from "../cbor/decode.js";
import { encodeCanonical } from "../cbor/encode.js";
import type { CborMap, CborValue } from "../cbor/value.js";
import { CodecError, ErrorClass } from "../errors.js";
import { isOp, isPersonaId, isWorkspaceId, parseTarget } from "../intent/grammar.js";
import { matchOp, matchTarget, patternCovers, personaWithin } from "./pattern.js";

/** One grant: every op matching one of `ops` on every target matching one of `targets`. */
export interface Right {
  ops: string[];
  targets: string[];
}

/** Named numeric limits primitives consult (e.g. "storage.bytes", "agents", "concurrent", "rate"). */
export type Limits = Record<string, number>;

/** The claims the kernel signs when it mints a token. */
export interface TokenClaims {
  /** Token id: 32 hex characters, globally unique. */
  id: string;
  /** Which kernel root key signed it. */
  kid: string;
  /** The persona the token is for (usable by it and its sub-personas). */
  sub: string;
  rights: Right[];
  limits: Limits;
  /** Not before / expiry, Unix ms. */
  nbf: number;
  exp: number;
  /** No refresh may move `exp` past this (Unix ms). */
  maxExp: number;
  /** Ids of the tokens this one was minted from, root first; empty for a root token. */
  chain: string[];
  /** If present, the workspaces the token may act in. */
  workspaces?: string[];
  /** If present, the security domains the token may act in. */
  domains?: string[];
}

/** One (op pattern, target pattern) pair of a `rights` caveat. */
export type RightPair = [op: string, target: string];

/** A caveat narrows a token; anyone holding it can add one offline. */
export type Caveat =
  | { t: "rights"; v: RightPair[] }
  | { t: "ops"; v: string[] }
  | { t: "targets"; v: string[] }
  | { t: "exp"; v: number }
  | { t: "sub"; v: string }
  | { t: "limits"; v: Limits }
  | { t: "workspaces"; v: string[] }
  | { t: "domains"; v: string[] };

export const CAVEAT_TYPES = ["rights", "ops", "targets", "exp", "sub", "limits", "workspaces", "domains"] as const;

/** A decoded token: claims and caveats with the exact bytes the chain was computed over. */
export interface Token {
  claims: TokenClaims;
  claimsBytes: Uint8Array;
  caveats: Caveat[];
  caveatBytes: Uint8Array[];
  sig: Uint8Array;
}

/** The token format version: the first element of the token array. */
export const TOKEN_VERSION = 1;
const SIG0_CONTEXT = Buffer.from("kpip-token-v1\0", "latin1");

/** A token that is malformed or fails a check (always CAPABILITY). */
export class TokenError extends CodecError {
  override name = "TokenError";
  constructor(code: string, message: string) {
    super(ErrorClass.CAPABILITY, code, message);
  }
}

/** sig0 = HMAC-SHA256(rootKey, "kpip-token-v1" 0x00 || claimsBytes). */
export function rootSignature(rootKey: Uint8Array, claimsBytes: Uint8Array): Buffer {
  return createHmac("sha256", rootKey).update(SIG0_CONTEXT).update(claimsBytes).digest();
}

/** sig' = HMAC-SHA256(sig, caveatBytes): the macaroon chain step. */
export function chainSignature(sig: Uint8Array, caveatBytes: Uint8Array): Buffer {
  return createHmac("sha256", sig).update(caveatBytes).digest();
}

/** The chain value after every caveat, from the root key: what a valid token's sig must equal. */
export function expectedSignature(rootKey: Uint8Array, t: Pick<Token, "claimsBytes" | "caveatBytes">): Buffer {
  let sig = rootSignature(rootKey, t.claimsBytes);
  for (const c of t.caveatBytes) sig = chainSignature(sig, c);
  return sig;
}

/** Mints a token over `claims` with a root key (kernel side). */
export function mintToken(rootKey: Uint8Array, claims: TokenClaims): Token {
  validateClaims(claims);
  const claimsBytes = encodeCanonical(claims as unknown as CborValue);
  return { claims, claimsBytes, caveats: [], caveatBytes: [], sig: rootSignature(rootKey, claimsBytes) };
}

/** Adds a caveat offline: no key needed, the result can only be narrower. */
export function attenuate(token: Token, caveat: Caveat): Token {
  validateCaveat(caveat);
  const bytes = encodeCanonical(caveat as unknown as CborValue);
  return {
    claims: token.claims,
    claimsBytes: token.claimsBytes,
    caveats: [...token.caveats, caveat],
    caveatBytes: [...token.caveatBytes, bytes],
    sig: chainSignature(token.sig, bytes),
  };
}

const DERIVED_CONTEXT = Buffer.from("kpip-token-derived-v1\0", "latin1");

/**
 * The id of a token attenuated offline: 32 hex characters of SHA-256("kpip-token-derived-v1" 0x00
 * || the minted token's id || each caveat's bytes, each preceded by its length as 4 bytes
 * big-endian). A token without caveats is its minted id. Computed from public parts only
 * (never the signature), so anyone holding the token, and the audit log, can name it.
 */
export function derivedTokenId(t: Pick<Token, "claims" | "caveatBytes">): string {
  if (t.caveatBytes.length === 0) return t.claims.id;
  const h = createHash("sha256").update(DERIVED_CONTEXT).update(t.claims.id, "latin1");
  const len = Buffer.alloc(4);
  for (const c of t.caveatBytes) {
    len.writeUInt32BE(c.length);
    h.update(len).update(c);
  }
  return h.digest("hex").slice(0, 32);
}

/** Wire form: canonical CBOR [1, claimsBytes, [caveatBytes…], sig]. */
export function encodeToken(t: Token): Buffer {
  return encodeCanonical([TOKEN_VERSION, t.claimsBytes, t.caveatBytes, t.sig]);
}

/** The text form used by the CLI and config files: base64url of the wire form. */
export function tokenToString(t: Token): string {
  return encodeToken(t).toString("base64url");
}

export function tokenFromString(s: string): Token {
  const bytes = Buffer.from(s.trim(), "base64url");
  if (bytes.length === 0) throw new TokenError("MALFORMED", "empty token");
  return decodeToken(bytes);
}

/** Parses a token's wire form and validates every part; the signature is NOT checked here. */
export function decodeToken(bytes: Uint8Array): Token {
  let v: CborValue;
  try {
    v = decodeCanonical(bytes, { maxDepth: 8, maxItems: 4096 });
  } catch (e) {
    throw new TokenError("MALFORMED", `token is not canonical CBOR: ${(e as Error).message}`);
  }
  if (!Array.isArray(v) || v.length !== 4) throw new TokenError("MALFORMED", "a token is a 4-element array");
  const [ver, claimsBytes, caveatBytes, sig] = v;
  if (ver !== TOKEN_VERSION) throw new TokenError("UNSUPPORTED_VERSION", `token version ${String(ver)} is not supported`);
  if (!(claimsBytes instanceof Uint8Array)) throw new TokenError("MALFORMED", "token claims must be a byte string");
  if (!Array.isArray(caveatBytes) || !caveatBytes.every((c) => c instanceof Uint8Array) || caveatBytes.length > 64) {
    throw new TokenError("MALFORMED", "token caveats must be an array of at most 64 byte strings");
  }
  if (!(sig instanceof Uint8Array) || sig.length !== 32) throw new TokenError("MALFORMED", "token signature must be 32 bytes");
  const claims = decodePart(claimsBytes, "claims") as unknown as TokenClaims;
  validateClaims(claims);
  const caveats = (caveatBytes as Uint8Array[]).map((b) => {
    const c = decodePart(b, "caveat") as unknown as Caveat;
    validateCaveat(c);
    return c;
  });
  return { claims, claimsBytes, caveats, caveatBytes: caveatBytes as Uint8Array[], sig };
}

function decodePart(bytes: Uint8Array, what: string): CborMap {
  let v: CborValue;
  try {
    v = decodeCanonical(bytes, { maxDepth: 6, maxItems: 4096 });
  } catch (e) {
    throw new TokenError("MALFORMED", `token ${what} is not canonical CBOR: ${(e as Error).message}`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) {
    throw new TokenError("MALFORMED", `token ${what} must be a map`);
  }
  return v as CborMap;
}

const isUint = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
const isTextArray = (x: unknown, ok: (s: string) => boolean, max = 64): x is string[] =>
  Array.isArray(x) && x.length <= max && x.every((s) => typeof s === "string" && ok(s));

const isOpPatternText = (p: unknown) => typeof p === "string" && isOpPattern(p);
const isTargetPatternText = (p: unknown) => typeof p === "string" && isTargetPattern(p);

export function isOpPattern(p: string): boolean {
  if (p === "**") return true;
  const segs = p.split(".");
  return (
    segs.every((s, i) => s === "*" || (s === "**" && i === segs.length - 1) || /^[a-z][a-z0-9_]*$/.test(s)) && p.length <= 128
  );
}

export function isTargetPattern(p: string): boolean {
  if (p === "**") return true;
  const parsed = parseTarget(p, true);
  if (typeof parsed === "string") return false;
  return parsed.segments.every((s, i) => s !== "**" || i === parsed.segments.length - 1);
}

function isLimits(x: unknown): x is Limits {
  if (x === null || typeof x !== "object" || Array.isArray(x) || x instanceof Uint8Array) return false;
  return Object.entries(x).every(([k, v]) => /^[a-z][a-z0-9_.]*$/.test(k) && isUint(v));
}

function validateRights(r: unknown): asserts r is Right[] {
  if (!Array.isArray(r) || r.length > 64) throw new TokenError("MALFORMED", "rights must be an array of at most 64 grants");
  for (const g of r) {
    const x = g as Record<string, unknown>;
    if (x === null || typeof x !== "object" || !isTextArray(x.ops, isOpPattern) || !isTextArray(x.targets, isTargetPattern)) {
      throw new TokenError("MALFORMED", "each right needs ops (op patterns) and targets (target patterns)");
    }
  }
}

/** Checks claims' structure; throws {@link TokenError}. */
export function validateClaims(c: unknown): asserts c is TokenClaims {
  const x = c as Record<string, unknown>;
  if (x === null || typeof x !== "object") throw new TokenError("MALFORMED", "claims must be a map");
  if (typeof x.id !== "string" || !/^[0-9a-f]{32}$/.test(x.id))
    throw new TokenError("MALFORMED", "claims.id must be 32 hex characters");
  if (typeof x.kid !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(x.kid))
    throw new TokenError("MALFORMED", "claims.kid is invalid");
  if (typeof x.sub !== "string" || !isPersonaId(x.sub)) throw new TokenError("MALFORMED", "claims.sub must be a persona id");
  validateRights(x.rights);
  if (!isLimits(x.limits)) throw new TokenError("MALFORMED", "claims.limits must map limit names to unsigned integers");
  if (!isUint(x.nbf) || !isUint(x.exp) || !isUint(x.maxExp) || x.exp > x.maxExp) {
    throw new TokenError("MALFORMED", "claims need nbf, exp and maxExp (Unix ms) with exp ≤ maxExp");
  }
  if (!isTextArray(x.chain, (s) => /^[0-9a-f]{32}$/.test(s), 32))
    throw new TokenError("MALFORMED", "claims.chain must list token ids");
  if (x.workspaces !== undefined && !isTextArray(x.workspaces, isWorkspaceId))
    throw new TokenError("MALFORMED", "claims.workspaces is invalid");
  if (x.domains !== undefined && !isTextArray(x.domains, (s) => s.length > 0 && s.length <= 128)) {
    throw new TokenError("MALFORMED", "claims.domains is invalid");
  }
  for (const k of Object.keys(x)) {
    if (!["id", "kid", "sub", "rights", "limits", "nbf", "exp", "maxExp", "chain", "workspaces", "domains"].includes(k)) {
      throw new TokenError("UNKNOWN_CLAIM", `unknown claim ${JSON.stringify(k)}`);
    }
  }
}

/** Checks a caveat; an unknown caveat type makes the token invalid (deny, never ignore). */
export function validateCaveat(c: unknown): asserts c is Caveat {
  const x = c as Record<string, unknown>;
  if (x === null || typeof x !== "object" || Object.keys(x).length !== 2 || !Object.hasOwn(x, "t") || !Object.hasOwn(x, "v")) {
    throw new TokenError("MALFORMED", "a caveat is a map {t, v}");
  }
  const ok = (() => {
    switch (x.t) {
      case "rights":
        return (
          Array.isArray(x.v) &&
          x.v.length > 0 &&
          x.v.length <= 64 &&
          x.v.every((p) => Array.isArray(p) && p.length === 2 && isOpPatternText(p[0]) && isTargetPatternText(p[1]))
        );
      case "ops":
        return isTextArray(x.v, isOpPattern) && x.v.length > 0;
      case "targets":
        return isTextArray(x.v, isTargetPattern) && x.v.length > 0;
      case "exp":
        return isUint(x.v);
      case "sub":
        return typeof x.v === "string" && isPersonaId(x.v);
      case "limits":
        return isLimits(x.v);
      case "workspaces":
        return isTextArray(x.v, isWorkspaceId);
      case "domains":
        return isTextArray(x.v, (s) => s.length > 0 && s.length <= 128);
      default:
        throw new TokenError("UNKNOWN_CAVEAT", `unknown caveat type ${JSON.stringify(x.t)}`);
    }
  })();
  if (!ok) throw new TokenError("MALFORMED", `caveat ${String(x.t)} has an invalid value`);
}

/**
 * The effective grant: the claims intersected with every caveat. Rights, op and target caveats
 * are kept as extra filters (a request must pass the rights and every filter; a rights caveat
 * is passed by one of its (op, target) pairs matching both); numbers take the minimum; lists
 * the intersection.
 */
export interface Grant {
  /** The minted token's id (claims.id): what revocation, refresh and ownership name. */
  id: string;
  /** For a token with caveats, its own id ({@link derivedTokenId}); undefined otherwise. */
  derived?: string;
  chain: string[];
  subject: string;
  rights: Right[];
  /** Rights caveats, each a list of rights of one op and one target pattern (its pairs). */
  pairFilters: Right[][];
  opFilters: string[][];
  targetFilters: string[][];
  limits: Limits;
  nbf: number;
  exp: number;
  maxExp: number;
  workspaces: string[] | undefined;
  domains: string[] | undefined;
  /** False when a sub caveat named a persona outside the claims' subject: usable by nobody. */
  usable: boolean;
  /**
   * The limits held over the wider subjects `sub` caveats narrowed away from (the claims'
   * subject first), each as it stood when narrowed: a token narrowed to a sub-persona still
   * counts that sub-persona's usage against the allowance it was minted with, over the whole
   * tree it was minted for. Absent when no caveat narrowed a subject that had limits.
   */
  above?: { persona: string; limits: Limits }[];
}

export function effectiveGrant(t: Token): Grant {
  const c = t.claims;
  const g: Grant = {
    id: c.id,
    ...(t.caveatBytes.length ? { derived: derivedTokenId(t) } : {}),
    chain: c.chain,
    subject: c.sub,
    rights: c.rights,
    pairFilters: [],
    opFilters: [],
    targetFilters: [],
    limits: { ...c.limits },
    nbf: c.nbf,
    exp: c.exp,
    maxExp: c.maxExp,
    workspaces: c.workspaces,
    domains: c.domains,
    usable: true,
  };
  for (const cv of t.caveats) {
    switch (cv.t) {
      case "rights":
        g.pairFilters.push(cv.v.map(([o, x]) => ({ ops: [o], targets: [x] })));
        break;
      case "ops":
        g.opFilters.push(cv.v);
        break;
      case "targets":
        g.targetFilters.push(cv.v);
        break;
      case "exp":
        g.exp = Math.min(g.exp, cv.v);
        g.maxExp = Math.min(g.maxExp, cv.v);
        break;
      case "sub":
        if (!personaWithin(cv.v, g.subject)) g.usable = false;
        else if (cv.v !== g.subject) {
          if (Object.keys(g.limits).length > 0) g.above = [...(g.above ?? []), { persona: g.subject, limits: { ...g.limits } }];
          g.subject = cv.v;
        }
        break;
      case "limits":
        for (const [k, v] of Object.entries(cv.v))
          g.limits[k] = Object.hasOwn(g.limits, k) ? Math.min(g.limits[k] as number, v) : v;
        break;
      case "workspaces":
        g.workspaces = g.workspaces ? g.workspaces.filter((w) => cv.v.includes(w)) : [...cv.v];
        break;
      case "domains":
        g.domains = g.domains ? g.domains.filter((d) => cv.v.includes(d)) : [...cv.v];
        break;
    }
  }
  return g;
}

/** Does the grant allow `op` on `target`? (Rights and every filter; time and subject are checked separately.) */
export function grantAllows(g: Grant, op: string, target: string): boolean {
  if (!isOp(op)) return false;
  const pass = (r: Right) => r.ops.some((p) => matchOp(p, op)) && r.targets.some((p) => matchTarget(p, target));
  if (!g.rights.some(pass)) return false;
  for (const f of g.pairFilters) if (!f.some(pass)) return false;
  for (const f of g.opFilters) if (!f.some((p) => matchOp(p, op))) return false;
  for (const f of g.targetFilters) if (!f.some((p) => matchTarget(p, target))) return false;
  return true;
}

/** Is every op × target `inner` allows also allowed by `outer`? Used to refuse escalation when minting. */
export function rightsWithin(inner: Right[], outer: Grant): boolean {
  const opOk = (o: string) => outer.opFilters.every((f) => f.some((p) => patternCovers(p, o, ".")));
  const targetOk = (x: string) => outer.targetFilters.every((f) => f.some((p) => patternCovers(p, x, "/")));
  const covered = (rights: Right[], o: string, x: string) =>
    rights.some((g) => g.ops.some((p) => patternCovers(p, o, ".")) && g.targets.some((p) => patternCovers(p, x, "/")));
  return inner.every((r) =>
    r.ops.every(
      (o) =>
        opOk(o) &&
        r.targets.every((x) => targetOk(x) && covered(outer.rights, o, x) && outer.pairFilters.every((f) => covered(f, o, x))),
    ),
  );
}
