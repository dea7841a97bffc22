/**
 * A deliberately simple reference for rights patterns, written from spec/PROTOCOL.md alone
 * (§7.2 grammar, §7.3 targets, §13.1 Patterns and Effective grant), never from src/token:
 * the differential tests (pattern-differential.test.ts) hold the production matcher, its
 * subset test and the mint check to it. Slow on purpose: plain recursion over segments and a
 * brute-force subset test over a finite set of witnesses.
 */

export const SCHEMES = ["obj", "agent", "topic", "op", "token", "persona", "kernel"];
const PCHAR = /^[A-Za-z0-9\-_.~!$&'()+,;=:@*]+$/;
const OP_SEG = /^[a-z][a-z0-9_]*$/;
const NAME = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
const isName = (s: string) => NAME.test(s) && !s.includes("..");
const isWild = (s: string) => s === "*" || s === "**";

/** §7.2/§7.3: a `seg` (one segment of a target or target pattern). */
function refSeg(s: string): boolean {
  if (!PCHAR.test(s) || s === "." || s === "..") return false;
  // §7.3.3: `*` only as a whole segment, `*` or `**`.
  return !s.includes("*") || isWild(s);
}

export interface RefTarget {
  scheme: string;
  segs: string[];
}

/** Parses a target or target pattern per §7.2/§7.3; null when the grammar refuses it. */
export function refParseTarget(t: string): RefTarget | null {
  if (Buffer.byteLength(t) > 2048) return null;
  const i = t.indexOf("://");
  if (i < 0) return null;
  const scheme = t.slice(0, i);
  const rest = t.slice(i + 3);
  if (!SCHEMES.includes(scheme)) return null;
  if (rest === "") return scheme === "kernel" ? { scheme, segs: [] } : null;
  const segs = rest.split("/");
  if (!segs.every(refSeg)) return null;
  // §7.3.4: obj/agent/persona name their first segment (a pattern may put a wildcard there).
  if ((scheme === "obj" || scheme === "agent" || scheme === "persona") && !isName(segs[0] ?? "") && !isWild(segs[0] ?? ""))
    return null;
  return { scheme, segs };
}

/** A concrete target: grammatical and without wildcard segments (§13.1: `*`/`**` are never literals). */
export function refConcreteTarget(t: string): RefTarget | null {
  const p = refParseTarget(t);
  return p && !p.segs.some(isWild) ? p : null;
}

/** §13.1: `**` is a wildcard as the last segment only; anywhere else the pattern matches nothing (§9.6). */
const wellPlaced = (segs: string[]) => segs.every((s, i) => s !== "**" || i === segs.length - 1);

/** Whole-segment matching of concrete segments against pattern segments. */
export function refMatchSegs(pat: string[], segs: string[]): boolean {
  if (!wellPlaced(pat)) return false;
  const tail = pat.length > 0 && pat[pat.length - 1] === "**";
  const fixed = tail ? pat.length - 1 : pat.length;
  if (tail ? segs.length < fixed : segs.length !== fixed) return false;
  for (let i = 0; i < fixed; i++) if (pat[i] !== "*" && pat[i] !== segs[i]) return false;
  return true;
}

export function refIsOp(op: string): boolean {
  const segs = op.split(".");
  return Buffer.byteLength(op) <= 128 && segs.length >= 2 && segs.every((s) => OP_SEG.test(s));
}

export function refIsOpPattern(p: string): boolean {
  if (p === "**") return true;
  const segs = p.split(".");
  return segs.length >= 1 && segs.every((s) => OP_SEG.test(s) || isWild(s)) && wellPlaced(segs);
}

/** `pattern` matches the concrete op `op` (§13.1). */
export function refMatchOp(pattern: string, op: string): boolean {
  if (!refIsOp(op) || !refIsOpPattern(pattern)) return false;
  if (pattern === "**") return true;
  return refMatchSegs(pattern.split("."), op.split("."));
}

/** `pattern` matches the concrete target `target` (§13.1). */
export function refMatchTarget(pattern: string, target: string): boolean {
  const t = refConcreteTarget(target);
  if (!t) return false;
  if (pattern === "**") return true;
  const p = refParseTarget(pattern);
  return !!p && p.scheme === t.scheme && refMatchSegs(p.segs, t.segs);
}

const FRESH = "q9fresh";

/**
 * Every concrete segment list the pattern segments `pat` match, up to the equivalence that
 * matters against the patterns `against`: at each position a wildcard stands for one of the
 * literals any of them has there, or for a literal none has (`FRESH`); a trailing `**` for
 * 0…(longest + 1 − fixed) such segments. A pattern compares a segment only with the
 * segment it has at that position, so these witnesses decide any question about `against`.
 */
export class TooMany extends Error {}
/** Witness sets past this are not enumerated (TooMany): the tests skip such a case. */
const MAX_WITNESSES = 1024;

function witnesses(pat: string[], against: string[][]): string[][] {
  if (!wellPlaced(pat)) return [];
  const at = (i: number) => [
    ...new Set([...against.map((a) => a[i]).filter((s): s is string => s !== undefined && !isWild(s)), FRESH]),
  ];
  const tail = pat.length > 0 && pat[pat.length - 1] === "**";
  const fixed = tail ? pat.length - 1 : pat.length;
  const longest = Math.max(fixed, ...against.map((a) => a.length)) + 1;
  const lengths = tail ? Array.from({ length: longest - fixed + 1 }, (_, k) => fixed + k) : [fixed];
  const out: string[][] = [];
  for (const n of lengths) {
    const walk = (i: number, acc: string[]) => {
      if (i === n) {
        if (out.length >= MAX_WITNESSES) throw new TooMany();
        return void out.push(acc);
      }
      const lit = pat[i];
      const choices = i < fixed && lit !== undefined && lit !== "*" ? [lit] : at(i);
      for (const c of choices) walk(i + 1, [...acc, c]);
    };
    walk(0, []);
  }
  return out;
}

/** Concrete targets standing for every target `pattern` matches, against the patterns `against`. */
export function refTargetWitnesses(pattern: string, against: string[]): string[] {
  const parsed = against.filter((a) => a !== "**").map(refParseTarget);
  if (pattern === "**") {
    // Every scheme; within each, as `scheme://**`.
    return SCHEMES.flatMap((s) => refTargetWitnesses(`${s}://**`, against));
  }
  const p = refParseTarget(pattern);
  if (!p) return [];
  const same = parsed.filter((a): a is RefTarget => !!a && a.scheme === p.scheme).map((a) => a.segs);
  return witnesses(p.segs, same)
    .map((segs) => `${p.scheme}://${segs.join("/")}`)
    .filter((t) => refConcreteTarget(t) !== null);
}

/** Concrete ops standing for every op `pattern` matches, against the patterns `against`. */
export function refOpWitnesses(pattern: string, against: string[]): string[] {
  const segsOf = (p: string) => (p === "**" ? ["**"] : p.split("."));
  const ws = witnesses(segsOf(pattern), against.map(segsOf));
  // An op has at least two segments: pad short witnesses so `**` also stands for deep ops.
  return [...new Set(ws.map((s) => s.join(".")))].filter(refIsOp).concat(pattern === "**" ? [`${FRESH}.${FRESH}`] : []);
}

/** §13.1 subset test: every concrete target `inner` can match is matched by `outer`. */
export function refTargetSubset(outer: string, inner: string): boolean {
  return refTargetWitnesses(inner, [outer]).every((t) => refMatchTarget(outer, t));
}

export interface RefGrant {
  rights: { ops: string[]; targets: string[] }[];
  pairs: [string, string][][];
  ops: string[][];
  targets: string[][];
}

/** §13.1 Effective grant, for a concrete op and target. */
export function refAllowsConcrete(g: RefGrant, op: string, target: string): boolean {
  const m = (o: string, t: string) => refMatchOp(o, op) && refMatchTarget(t, target);
  return (
    g.rights.some((r) => r.ops.some((o) => refMatchOp(o, op)) && r.targets.some((t) => refMatchTarget(t, target))) &&
    g.pairs.every((c) => c.some(([o, t]) => m(o, t))) &&
    g.ops.every((c) => c.some((o) => refMatchOp(o, op))) &&
    g.targets.every((c) => c.some((t) => refMatchTarget(t, target)))
  );
}

export const refGrantTargets = (g: RefGrant) => [
  ...g.rights.flatMap((r) => r.targets),
  ...g.pairs.flatMap((c) => c.map(([, t]) => t)),
  ...g.targets.flat(),
];
export const refGrantOps = (g: RefGrant) => [
  ...g.rights.flatMap((r) => r.ops),
  ...g.pairs.flatMap((c) => c.map(([o]) => o)),
  ...g.ops.flat(),
];

/** §13.1: a request target that is a pattern is allowed only if every target it can match is. */
export function refAllows(g: RefGrant, op: string, target: string): boolean {
  if (refConcreteTarget(target)) return refAllowsConcrete(g, op, target);
  return refTargetWitnesses(target, refGrantTargets(g)).every((t) => refAllowsConcrete(g, op, t));
}

/** `f()`, or undefined when its witnesses are too many to enumerate. */
export function decided<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch (e) {
    if (e instanceof TooMany) return undefined;
    throw e;
  }
}

/**
 * Every (op, target) pair the rights `inner` allow is allowed by `outer` (mint: no escalation);
 * undefined when the witnesses are too many to enumerate.
 */
export function refRightsWithin(inner: { ops: string[]; targets: string[] }[], outer: RefGrant): boolean | undefined {
  return decided(() => rightsWithinOrThrow(inner, outer));
}

function rightsWithinOrThrow(inner: { ops: string[]; targets: string[] }[], outer: RefGrant): boolean {
  let budget = 20_000;
  const ops = [...refGrantOps(outer), ...inner.flatMap((r) => r.ops)];
  const targets = [...refGrantTargets(outer), ...inner.flatMap((r) => r.targets)];
  for (const r of inner)
    for (const o of r.ops)
      for (const t of r.targets) {
        const ts = refTargetWitnesses(t, targets);
        for (const op of refOpWitnesses(o, ops))
          for (const target of ts)
            if (--budget < 0) throw new TooMany();
            else if (refMatchOp(o, op) && refMatchTarget(t, target) && !refAllowsConcrete(outer, op, target)) return false;
      }
  return true;
}
