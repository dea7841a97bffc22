import type { Grant } from "@kpip/protocol";
import type { TokenBound, TokenStore } from "../store/types.js";

/**
 * `persona` and every persona it lies under (PROTOCOL's persona tree: `alice/agent.w1` and
 * `alice/helper` are alice's), nearest first: usage charged to a persona is charged to each.
 */
export function personaLineage(persona: string): string[] {
  const out = [persona];
  for (let i = persona.lastIndexOf("/"); i > 0; i = persona.lastIndexOf("/", i - 1)) out.push(persona.slice(0, i));
  return out;
}

/** The top of `persona`'s tree: what the kernel-wide per-persona bounds count. */
export function rootPersona(persona: string): string {
  const i = persona.indexOf("/");
  return i < 0 ? persona : persona.slice(0, i);
}

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
 * The bounds a request under a grant is held to, from the grant's token row (read once per
 * grant): besides the grant's own limits (over its subject's tree), every limit a token it was
 * minted from holds — an agent's token and a token minted for a sub-persona cannot use what the
 * parent already used.
 */
export class GrantBounds {
  private readonly cache = new WeakMap<Grant, readonly Bound[]>();

  constructor(private readonly store?: Pick<TokenStore, "getToken">) {}

  of(grant: Grant | undefined): readonly Bound[] {
    if (!grant || !this.store) return NONE;
    let b = this.cache.get(grant);
    if (b === undefined) {
      b = this.store.getToken(grant.id)?.bounds ?? NONE;
      this.cache.set(grant, b);
    }
    return b;
  }
}

/**
 * The persona whose tree a grant's own limits bound for a request of `persona`: the grant's
 * subject (a token is usable by its subject's sub-personas, whose usage is its subject's).
 */
export function grantScope(persona: string, grant: Grant | undefined): string {
  return grant && inTree(persona, grant.subject) ? grant.subject : persona;
}

const NONE: readonly Bound[] = Object.freeze([]);
