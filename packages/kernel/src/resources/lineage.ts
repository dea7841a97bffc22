import type { Grant } from "@kpip/protocol";
import { isAgentPersona } from "../agents/namespace.js";
import { TreeSharedFifo } from "../auth/tree-shared-fifo.js";
import type { PersonaStore, TokenBound, TokenStore } from "../store/types.js";

/**
 * `persona` and every persona it lies under (PROTOCOL's persona tree: `alice/agent.w1` and
 * `alice/helper` are alice's), nearest first: usage charged to a persona is charged to each.
 */
export function personaLineage(persona: string): string[] {
  const out: string[] = [];
  forEachInLineage(persona, (p) => out.push(p));
  return out;
}

/** Calls `f` with each of {@link personaLineage}'s ids, nearest first, without building the array (the ledger's per-request walk). */
export function forEachInLineage(persona: string, f: (p: string) => void): void {
  f(persona);
  for (let i = persona.lastIndexOf("/"); i > 0; i = persona.lastIndexOf("/", i - 1)) f(persona.slice(0, i));
}

/** The first segment of `persona`'s id: the tree of a persona no configured persona lies over. */
export function firstSegment(persona: string): string {
  const i = persona.indexOf("/");
  return i < 0 ? persona : persona.slice(0, i);
}

/** Where a persona's registration comes from: its registrar, null for the kernel or an operator, undefined when not registered. */
export type RegistrarOf = (id: string) => string | null | undefined;

/** Roots remembered at most (each is one indexed read per level to find): past this the oldest go. */
const ROOTS_KEPT = 10_000;
/**
 * The share of {@link ROOTS_KEPT} one tree's personas may hold (a quarter, as the verified-token
 * cache's): a tree naming ever new agents or sub-personas replaces its own oldest roots, not
 * every other tree's (the cache once started again whole when full).
 */
const ROOTS_TREE_SHARE = 4;

/**
 * The top of each persona's tree, which the kernel-wide per-persona bounds count (processes,
 * sessions, subscriptions, uploads, ops, live tokens, refusal records, registrations, ended
 * agents): the shortest prefix of its id (itself included) that a persona the operator
 * configured — registered by the kernel, an operator, or the admin's tree — and not an agent.
 * So personas the admin registered side by side (`team/alice`, `team/bob`, no `team`) are two
 * trees, while the sub-personas a persona registers (persona.register keeps them inside the
 * registrar's tree) and its agents (`<spawner>/agent.<name>`) are its tree. Every member of a
 * tree lies under its root by id, so a tree is an id range. A persona under no configured
 * prefix (not registered; an older home's sub-persona registered outside its tree) falls back
 * to the first segment of its id.
 *
 * Found from the registry once per persona and cached (no read on the request path); a change of
 * the registry ({@link changed}: the kernel hooks it to the store's onRegistryChange) drops the
 * roots of the personas at or under the changed id.
 */
export class PersonaRoots {
  /** Each persona's root, by the root's tree: what the bound forgets leaves the index {@link under} too. */
  private readonly cache = new TreeSharedFifo<string>(ROOTS_KEPT, Number.POSITIVE_INFINITY, ROOTS_TREE_SHARE, (p) =>
    this.unindex(p),
  );

  constructor(
    private readonly registrarOf: RegistrarOf,
    private readonly admin: string,
  ) {}

  /**
   * The cached personas by each id at or above them (themselves included): what a change of that
   * id drops, found without a pass over the whole cache — a tree's removal tells each of its
   * personas' removal, up to maxRegisteredPersonas (more for the admin's) in one turn.
   */
  private readonly under = new Map<string, Set<string>>();

  of(persona: string): string {
    let r = this.cache.get(persona);
    if (r === undefined) {
      r = this.find(persona);
      this.cache.add(persona, r, r, 1);
      forEachInLineage(persona, (p) => {
        let s = this.under.get(p);
        if (s === undefined) {
          s = new Set();
          this.under.set(p, s);
        }
        s.add(persona);
      });
    }
    return r;
  }

  private clear(): void {
    this.cache.clear();
    this.under.clear();
  }

  /**
   * The registry changed (persona `id` added or removed; undefined: anything, made offline): the
   * roots that may have moved are found again. A root is found from the registrations of its
   * persona's own id and the ids above it only, so only personas at or under `id` go: any persona
   * may register and remove sub-personas in its tree, and each of its changes cleared every
   * tree's roots (a registry read per level for every other persona's next request). An agent
   * persona's key moves no root ({@link find} stops at an agent segment), so agents coming and
   * going keep the cache.
   */
  changed(id?: string): void {
    if (id === undefined) {
      this.clear();
      return;
    }
    if (isAgentPersona(id)) return;
    const gone = this.under.get(id);
    if (gone === undefined) return;
    this.under.delete(id);
    for (const p of gone) {
      this.cache.delete(p);
      this.unindex(p);
    }
  }

  /** Takes `p` out of the index by the ids above it. */
  private unindex(p: string): void {
    forEachInLineage(p, (q) => {
      const s = this.under.get(q);
      if (s === undefined) return;
      s.delete(p);
      if (s.size === 0) this.under.delete(q);
    });
  }

  private find(persona: string): string {
    for (let i = persona.indexOf("/"); ; i = persona.indexOf("/", i + 1)) {
      const p = i < 0 ? persona : persona.slice(0, i);
      // An agent (or anything under one) is never the top of a tree: it lies under its spawner.
      if (isAgentPersona(p)) break;
      const by = this.registrarOf(p);
      if (by === null || (by !== undefined && inTree(by, this.admin))) return p;
      if (i < 0) break;
    }
    return firstSegment(persona);
  }
}

/** What a bound asks of the roots: the top of a persona's tree. */
/**
 * The nearest persona above `id` that is registered, or undefined: who inherits what a removed
 * persona (or an ended agent) saw, so that a later registration of its id sees none of it.
 */
export function registeredAbove(store: Pick<PersonaStore, "getPersona">, id: string): string | undefined {
  for (let i = id.lastIndexOf("/"); i > 0; i = id.lastIndexOf("/", i - 1))
    if (store.getPersona(id.slice(0, i))) return id.slice(0, i);
  return undefined;
}

export type TreeRoots = Pick<PersonaRoots, "of">;

/** Roots by the first segment of the id only: for a component used without a registry (unit tests). */
export const FIRST_SEGMENT: TreeRoots = { of: firstSegment };

/** Whether `persona` is `root` or lies under it. */
export const inTree = (persona: string, root: string) =>
  persona === root || (persona.length > root.length && persona.startsWith(root) && persona[root.length] === "/");

/** A limit an ancestor token holds over `persona`'s tree (stored with each token minted under it). */
export type Bound = TokenBound;

/**
 * The bounds of a token minted for `sub` from `parent` (whose own are `parentBounds`): the
 * parent's limits over its subject's tree and the parent's bounds, kept for the personas `sub`
 * lies under or is (a limit over anyone else's tree is not charged by `sub`'s usage), merged to
 * the lowest value of each limit per persona: at most one entry per level of `sub`'s id.
 */
export function childBounds(sub: string, parent: Grant, parentBounds: readonly Bound[]): Bound[] {
  const merged = new Map<string, Record<string, number>>();
  for (const b of [{ persona: parent.subject, limits: parent.limits }, ...parentBounds]) {
    if (!inTree(sub, b.persona) || Object.keys(b.limits).length === 0) continue;
    const m = merged.get(b.persona) ?? {};
    for (const [k, v] of Object.entries(b.limits)) if (k !== "rate" && (!Object.hasOwn(m, k) || v < (m[k] as number))) m[k] = v;
    if (Object.keys(m).length > 0) merged.set(b.persona, m);
  }
  return [...merged].map(([persona, limits]) => ({ persona, limits }));
}

/**
 * Every limit a grant is held to besides its own over its subject's tree: those of the tokens it
 * was minted from (`minted`, its token row's) and, when `sub` caveats narrowed its subject, its
 * token's own limits over the subject it was minted for ({@link Grant.above}): narrowing a token
 * to a sub-persona offline must not give that sub-persona a fresh allowance.
 */
function grantBoundsOf(grant: Grant, minted: readonly Bound[]): readonly Bound[] {
  return grant.above?.length ? [...minted, ...grant.above] : minted;
}

/** What a grant's token row adds to it, read once per grant: the bounds it was minted under, and its rate family. */
interface GrantRow {
  bounds: readonly Bound[];
  family: string;
}

/**
 * The bounds a request under a grant is held to, from the grant's token row (read once per
 * grant, shared with the enforcer's rate family and the token service's mint, which passes them
 * on): besides the grant's own limits (over its subject's tree), every limit a token it was
 * minted from holds — an agent's token and a token minted for a sub-persona cannot use what the
 * parent already used.
 */
export class GrantBounds {
  private readonly cache = new WeakMap<Grant, GrantRow>();

  constructor(private readonly store?: Pick<TokenStore, "getToken">) {}

  private row(grant: Grant): GrantRow {
    let r = this.cache.get(grant);
    if (r === undefined) {
      const t = this.store?.getToken(grant.id);
      r = { bounds: grantBoundsOf(grant, t?.bounds ?? NONE), family: t?.family ?? grant.id };
      this.cache.set(grant, r);
    }
    return r;
  }

  of(grant: Grant | undefined): readonly Bound[] {
    if (!grant) return NONE;
    return this.store ? this.row(grant).bounds : (grant.above ?? NONE);
  }

  /** The grant's rate-limit key: its token family (a refreshed or minted copy shares the bucket). */
  family(grant: Grant): string {
    return this.row(grant).family;
  }
}

/**
 * The persona whose tree a grant's own limits bound for a request of `persona`: the grant's
 * subject (a token is usable by its subject's sub-personas, whose usage is its subject's).
 */
export function grantScope(persona: string, grant: Grant | undefined): string {
  return grant && inTree(persona, grant.subject) ? grant.subject : persona;
}

/** A limit that binds a request: [the persona whose tree's usage counts, the limit]. */
export type LimitOver = readonly [scope: string, limit: number];

/**
 * The limits on `resource` that bind a request of `persona` under `grant` (minted under
 * `bounds`): the grant's own over its subject's tree, each ancestor token's over its persona's
 * tree when `persona` lies in it.
 */
export function limitsOver(
  persona: string,
  grant: Grant | undefined,
  bounds: readonly Bound[],
  resource: string,
): readonly LimitOver[] {
  // No closure or array for a request nothing limits: every request asks.
  let out: LimitOver[] | undefined;
  if (grant && Object.hasOwn(grant.limits, resource)) out = [[grantScope(persona, grant), grant.limits[resource] as number]];
  for (const b of bounds) {
    if (!Object.hasOwn(b.limits, resource) || !inTree(persona, b.persona)) continue;
    const l: LimitOver = [b.persona, b.limits[resource] as number];
    if (out) out.push(l);
    else out = [l];
  }
  return out ?? NO_LIMITS;
}

/**
 * The first limit on `resource` (a count: requests in flight, processes running) that one more
 * for `persona` would pass, `count(scope)` being what `scope`'s tree has now; undefined when
 * every one has room. One check for the ledger's `concurrent` and the process table's `agents`.
 */
export function countAtLimit(
  persona: string,
  grant: Grant | undefined,
  bounds: readonly Bound[],
  resource: string,
  count: (scope: string) => number,
): { scope: string; n: number; limit: number } | undefined {
  // limitsOver's limits in its order, walked without its arrays and an iterator: every request asks.
  if (grant && Object.hasOwn(grant.limits, resource)) {
    const scope = grantScope(persona, grant);
    const limit = grant.limits[resource] as number;
    const n = count(scope);
    if (n >= limit) return { scope, n, limit };
  }
  for (let i = 0; i < bounds.length; i++) {
    const b = bounds[i] as Bound;
    if (!Object.hasOwn(b.limits, resource) || !inTree(persona, b.persona)) continue;
    const limit = b.limits[resource] as number;
    const n = count(b.persona);
    if (n >= limit) return { scope: b.persona, n, limit };
  }
  return undefined;
}

/** How a limit's refusal names the tree it counted: `scope`, and the requester when it lies under it. */
export const overName = (scope: string, persona: string) => (scope === persona ? persona : `${scope} (over ${persona})`);

/**
 * A limit's refusal (a token's `storage.bytes`, `concurrent`, `agents`, a named resource). The
 * limit's own persona is told its usage (`own`, e.g. "3 used + 2 > limit 4"); a persona under it
 * only what it asked and the limit (`asked`): the usage is the tree's other members' too (case 512).
 */
export function limitRefusal(limit: string, scope: string, persona: string, own: string, asked: string): string {
  return scope === persona
    ? `${limit} exceeded for ${persona}: ${own}`
    : `${limit} exceeded for ${overName(scope, persona)}: ${asked}`;
}

/** How a kernel-wide per-tree bound's refusal names the tree: the requester, or its root with the personas under it. */
export const treeName = (root: string, persona: string) => (root === persona ? persona : `${root} (with the personas under it)`);

/**
 * A kernel-wide per-tree bound's refusal (maxPendingOpsPerPersona, maxSessionsPerPersona, ...).
 * The tree's root is told what its tree holds (`held`, given the bound's value and name, e.g.
 * "already has 3 sessions (maxSessionsPerPersona 3)"); a persona under it only which bound
 * refused and its value: the count is of the tree's other members too (as storage.bytes, case
 * 512). `asked`, when more than one of `what` was asked for.
 */
export function treeBoundRefusal(
  root: string,
  persona: string,
  b: { held: (limit: number, bound: string) => string; what: string; bound: string; limit: number; asked?: number },
): string {
  if (root === persona) return `${persona} ${b.held(b.limit, b.bound)}`;
  return `${treeName(root, persona)} has no room for ${b.asked === undefined ? "more" : `${b.asked} more`} ${b.what} (${b.bound} ${b.limit})`;
}

const NONE: readonly Bound[] = Object.freeze([]);
const NO_LIMITS: readonly LimitOver[] = Object.freeze([]);
