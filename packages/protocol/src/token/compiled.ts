/**
 * Compiled rights patterns: a grant's patterns turned once into segment tries, so a check
 * costs the depth of the name (times the few wildcard branches that apply), not the number of
 * patterns. Same meaning as {@link matchOp}, {@link matchTarget} and {@link patternCovers}
 * (a property test holds them equal); a grant's cost is paid once per bound token, not per request.
 */
import { isOp } from "../intent/grammar.js";
import type { Grant, Right } from "./token.js";

interface Node {
  lit: Map<string, Node> | undefined;
  star: Node | undefined;
  /** A pattern ends here. */
  end: boolean;
  /** A pattern ends here with `**`: this node matches every continuation. */
  rest: boolean;
}

const node = (): Node => ({ lit: undefined, star: undefined, end: false, rest: false });

/** Op names split on "."; targets as [scheme + ":", …segments], the whole-target `**` as ["**"]. */
function segments(s: string, kind: "op" | "target"): string[] | undefined {
  if (kind === "op" || s === "**") return s.split(".");
  const i = s.indexOf("://");
  if (i < 0) return undefined;
  const rest = s.slice(i + 3);
  return rest === "" ? [`${s.slice(0, i)}:`] : [`${s.slice(0, i)}:`, ...rest.split("/")];
}

/**
 * A name split into its segments, once per check: a grant may hold hundreds of pattern sets (a
 * rights caveat's every pair is one), and splitting a 2 KiB target for each cost ~30 µs a set —
 * tens of ms a request (red team, wt-red31). `asPattern`: the name is itself a pattern (see
 * {@link PatternSet.matches}).
 */
export interface SplitName {
  segs: string[] | undefined;
  asPattern: boolean;
}

/** `name` split for {@link PatternSet.test}: as {@link PatternSet.matches} reads it, or as a pattern to be covered. */
export function splitName(name: string, kind: "op" | "target", asPattern = kind === "target" && name.includes("*")): SplitName {
  return { segs: segments(name, kind), asPattern };
}

/** A set of op or target patterns, matched all at once. */
export class PatternSet {
  private readonly root = node();
  readonly size: number;

  constructor(
    patterns: readonly string[],
    private readonly kind: "op" | "target",
  ) {
    this.size = patterns.length;
    for (const p of patterns) {
      const segs = segments(p, kind);
      if (!segs) continue;
      let n = this.root;
      let ok = true;
      for (let i = 0; i < segs.length; i++) {
        const seg = segs[i] as string;
        if (seg === "**") {
          // Only valid as the last segment; anywhere else the pattern matches nothing.
          if (i === segs.length - 1) n.rest = true;
          ok = false;
          break;
        }
        if (seg === "*") n = n.star ??= node();
        else {
          n.lit ??= new Map();
          let next = n.lit.get(seg);
          if (!next) {
            next = node();
            n.lit.set(seg, next);
          }
          n = next;
        }
      }
      if (ok) n.end = true;
    }
  }

  /**
   * Does some pattern match `name`? A target with a wildcard (a subscription pattern) is itself
   * a pattern: it is allowed only if one pattern covers everything it can match, never by
   * matching its `*` or `**` as a literal segment.
   */
  matches(name: string): boolean {
    return this.test(splitName(name, this.kind));
  }

  /** Does some single pattern match everything `pattern` matches? (Used to refuse widening.) */
  covers(pattern: string): boolean {
    return this.test(splitName(pattern, this.kind, true));
  }

  /** {@link matches} or {@link covers} on a name split once ({@link splitName}) for every set asked. */
  test(name: SplitName): boolean {
    if (!name.segs) return this.root.rest;
    return this.walk(name.segs, name.asPattern);
  }

  private walk(segs: string[], asPattern: boolean): boolean {
    let cur: Node[] = [this.root];
    for (const seg of segs) {
      const next: Node[] = [];
      for (const n of cur) {
        if (n.rest) return true;
        // As a pattern, the inner `**` is covered only by an outer `**` (checked above).
        if (asPattern && seg === "**") continue;
        if (n.star) next.push(n.star);
        if (asPattern && seg === "*") continue;
        const l = n.lit?.get(seg);
        if (l) next.push(l);
      }
      if (next.length === 0) return false;
      cur = next;
    }
    return cur.some((n) => n.end || n.rest);
  }
}

/** A grant's rights and filters, compiled: {@link grantAllows} in time independent of the pattern count. */
type CompiledRight = { ops: PatternSet; targets: PatternSet };
export interface CompiledGrant {
  rights: CompiledRight[];
  /** Rights caveats: a request must match one right of each. */
  pairFilters: CompiledRight[][];
  opFilters: PatternSet[];
  targetFilters: PatternSet[];
}

const compiled = new WeakMap<Grant, CompiledGrant>();

/** The grant's compiled form, made once per grant object (a bound handle keeps its grant). */
export function compileGrant(g: Grant): CompiledGrant {
  let c = compiled.get(g);
  if (!c) {
    const compileRights = (rs: Right[]) =>
      rs.map((r) => ({ ops: new PatternSet(r.ops, "op"), targets: new PatternSet(r.targets, "target") }));
    c = {
      rights: compileRights(g.rights),
      pairFilters: g.pairFilters.map(compileRights),
      opFilters: g.opFilters.map((f) => new PatternSet(f, "op")),
      targetFilters: g.targetFilters.map((f) => new PatternSet(f, "target")),
    };
    compiled.set(g, c);
  }
  return c;
}

/** {@link grantAllows} on the compiled grant. */
export function compiledAllows(c: CompiledGrant, op: string, target: string): boolean {
  if (!isOp(op)) return false;
  // Split once for every set below, however many the grant's caveats hold.
  const o = splitName(op, "op");
  const t = splitName(target, "target");
  const pass = (r: CompiledRight) => r.ops.test(o) && r.targets.test(t);
  if (!c.rights.some(pass)) return false;
  for (const f of c.pairFilters) if (!f.some(pass)) return false;
  for (const f of c.opFilters) if (!f.test(o)) return false;
  for (const f of c.targetFilters) if (!f.test(t)) return false;
  return true;
}

/**
 * {@link rightsWithin} without walking every (op, target) pair against every pattern: each
 * distinct inner op and target is checked once against each outer right (a bit per right),
 * then every pair of a right needs one common bit. Cost: distinct inner patterns × outer
 * rights trie walks, plus one AND per pair — callers bound the inner sizes first.
 */
export function compiledRightsWithin(inner: Right[], outer: CompiledGrant): boolean {
  // Each inner pattern split once, for the claims' rights and every rights caveat alike.
  const splits = { ops: new Map<string, SplitName>(), targets: new Map<string, SplitName>() };
  if (!rightsCovered(inner, outer.rights, outer.opFilters, outer.targetFilters, splits)) return false;
  // Each rights caveat is a list of rights too: every inner pair must lie in one of its pairs.
  return outer.pairFilters.every((f) => rightsCovered(inner, f, [], [], splits));
}

function rightsCovered(
  inner: Right[],
  outerRights: CompiledRight[],
  opFilters: PatternSet[],
  targetFilters: PatternSet[],
  splits: Record<"ops" | "targets", Map<string, SplitName>>,
): boolean {
  const masks = (kind: "ops" | "targets", filters: PatternSet[]) => {
    // A bit per outer right covering the pattern; undefined when a filter refuses it.
    const out = new Map<string, bigint | undefined>();
    for (const r of inner) {
      for (const p of r[kind]) {
        if (out.has(p)) continue;
        // Split once for every outer set it is checked against.
        let split = splits[kind].get(p);
        if (!split) {
          split = splitName(p, kind === "ops" ? "op" : "target", true);
          splits[kind].set(p, split);
        }
        if (!filters.every((f) => f.test(split))) {
          out.set(p, undefined);
          continue;
        }
        let m = 0n;
        outerRights.forEach((g, i) => {
          if (g[kind].test(split)) m |= 1n << BigInt(i);
        });
        out.set(p, m);
      }
    }
    return out;
  };
  const opMask = masks("ops", opFilters);
  const targetMask = masks("targets", targetFilters);
  for (const r of inner) {
    for (const o of r.ops) {
      const om = opMask.get(o);
      if (om === undefined) return false;
      for (const x of r.targets) {
        const xm = targetMask.get(x);
        if (xm === undefined || (om & xm) === 0n) return false;
      }
    }
  }
  return true;
}
