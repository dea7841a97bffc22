/**
 * SQLite's GLOB, in TypeScript: what `kpip audit query --persona/--op` matched when it filtered
 * in SQL, before the fields moved into the records' bytes. The same walk as SQLite's
 * patternCompare (func.c), over code points, case-sensitive:
 * - `*` any run of characters, `?` exactly one;
 * - `[…]` one character of a set: `^` first inverts it, `]` first (after any `^`) is a member,
 *   `a-z` a range (a `-` first, last, or right after a range is itself a member); a `[` never
 *   closed matches nothing;
 * - anything else, `]` included, itself.
 * Pinned to SQLite's own GLOB by a property test (packages/cli/test/glob.test.ts).
 */

const MATCH = 0;
const NO_MATCH = 1;
/** No match here, nor with any longer run for an enclosing `*` (SQLite's SQLITE_NOWILDCARDMATCH): stops the search. */
const NO_WILDCARD_MATCH = 2;

const STAR = 0x2a;
const ONE = 0x3f;
const SET = 0x5b;
const CLOSE = 0x5d;

/** A test of a string against `pattern`, with SQLite's GLOB semantics. */
export function sqliteGlob(pattern: string): (s: string) => boolean {
  const p = codePoints(pattern);
  return (s) => compare(p, 0, codePoints(s), 0) === MATCH;
}

function codePoints(s: string): number[] {
  const out: number[] = [];
  for (const ch of s) out.push(ch.codePointAt(0) as number);
  return out;
}

/** patternCompare: `p` from `pi` against `s` from `si`. */
function compare(p: number[], pi: number, s: number[], si: number): number {
  while (pi < p.length) {
    const c = p[pi++] as number;
    if (c === STAR) {
      // Runs of `*` and `?` after it: each `?` takes one character.
      let next: number | undefined;
      while (pi < p.length) {
        next = p[pi] as number;
        if (next === STAR) pi++;
        else if (next === ONE) {
          pi++;
          if (si >= s.length) return NO_WILDCARD_MATCH;
          si++;
        } else break;
        next = undefined;
      }
      if (pi >= p.length) return MATCH;
      if (next === SET) {
        // A set right after `*`: try it at every position.
        for (; si < s.length; si++) {
          const m = compare(p, pi, s, si);
          if (m !== NO_MATCH) return m;
        }
        return NO_WILDCARD_MATCH;
      }
      // A literal: try the rest after each place it occurs.
      while (si < s.length) {
        if (s[si++] !== next) continue;
        const m = compare(p, pi + 1, s, si);
        if (m !== NO_MATCH) return m;
      }
      return NO_WILDCARD_MATCH;
    }
    if (c === SET) {
      if (si >= s.length) return NO_MATCH;
      const ch = s[si++] as number;
      let seen = false;
      let invert = false;
      let c2 = p[pi++];
      if (c2 === 0x5e) {
        invert = true;
        c2 = p[pi++];
      }
      if (c2 === CLOSE) {
        if (ch === CLOSE) seen = true;
        c2 = p[pi++];
      }
      let prior = 0;
      while (c2 !== undefined && c2 !== CLOSE) {
        if (c2 === 0x2d && pi < p.length && p[pi] !== CLOSE && prior > 0) {
          c2 = p[pi++] as number;
          if (ch >= prior && ch <= c2) seen = true;
          prior = 0;
        } else {
          if (ch === c2) seen = true;
          prior = c2;
        }
        c2 = p[pi++];
      }
      if (c2 === undefined || seen === invert) return NO_MATCH;
      continue;
    }
    if (si >= s.length) return NO_MATCH;
    const c2 = s[si++] as number;
    if (c === c2 || c === ONE) continue;
    return NO_MATCH;
  }
  return si >= s.length ? MATCH : NO_MATCH;
}
