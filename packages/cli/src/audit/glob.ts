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
      const set = inSet(p, pi, s[si++] as number);
      if (set === undefined || !set.hit) return NO_MATCH;
      pi = set.next;
      continue;
    }
    if (si >= s.length) return NO_MATCH;
    const c2 = s[si++] as number;
    if (c === c2 || c === ONE) continue;
    return NO_MATCH;
  }
  return si >= s.length ? MATCH : NO_MATCH;
}

/**
 * A `[…]` set whose `[` is just before `p[pi]`, against the character `ch`: whether `ch` is in
 * it, and where the pattern goes on after its `]` (the same whatever `ch`); undefined for a `[`
 * never closed (it matches nothing). patternCompare's set, shared by both globs here.
 */
function inSet(p: number[], pi: number, ch: number): { hit: boolean; next: number } | undefined {
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
  return c2 === undefined ? undefined : { hit: seen !== invert, next: pi };
}

// What one element of a path glob matches.
/** One given character. */
const CHAR = 0;
/** `?`: one character other than the separator. */
const ONE_CHAR = 1;
/** `*`: any run of characters within one segment. */
const RUN = 2;
/** `**`: any run of characters, separators too. */
const ANY_RUN = 3;
/** `[…]`: one character other than the separator, from the set. */
const IN_SET = 4;
/** A `[` never closed: nothing. */
const NOTHING = 5;

/**
 * A path glob over names whose segments `sep` separates (`kpip audit timeline`'s --persona,
 * --op, --target): `*` any run within one segment, `**` (or a longer run of stars) any run
 * across segments, `?` one character other than `sep`, `[…]` one character other than `sep`
 * from a set written as in SQLite's GLOB above (a `[` never closed matches nothing), anything
 * else itself; over code points, case-sensitive. No regular expression: the value is walked once,
 * carrying the set of pattern positions reached, so the time is at most pattern × value length
 * whatever the pattern (the RegExp this replaced backtracked: twelve `*a` against 40 characters
 * took minutes).
 */
export function pathGlob(pattern: string, sep: string): (s: string) => boolean {
  const p = codePoints(pattern);
  const sepCode = sep.codePointAt(0) as number;
  const kinds: number[] = [];
  /** The character of a Char, the index after the `[` of a Set. */
  const args: number[] = [];
  for (let i = 0; i < p.length; ) {
    const c = p[i] as number;
    if (c === STAR) {
      let n = 0;
      while (p[i] === STAR) {
        i++;
        n++;
      }
      kinds.push(n > 1 ? ANY_RUN : RUN);
      args.push(0);
    } else if (c === ONE) {
      kinds.push(ONE_CHAR);
      args.push(0);
      i++;
    } else if (c === SET) {
      const set = inSet(p, i + 1, -1);
      if (set === undefined) {
        kinds.push(NOTHING);
        args.push(0);
        break;
      }
      kinds.push(IN_SET);
      args.push(i + 1);
      i = set.next;
    } else {
      kinds.push(CHAR);
      args.push(c);
      i++;
    }
  }
  const m = kinds.length;
  return (s) => {
    let now = new Uint8Array(m + 1);
    let next = new Uint8Array(m + 1);
    /** Reaches position i, and the positions after the runs there (a run may match nothing). */
    const reach = (at: Uint8Array, i: number) => {
      for (; !at[i]; i++) {
        at[i] = 1;
        if (i >= m || (kinds[i] !== RUN && kinds[i] !== ANY_RUN)) return;
      }
    };
    reach(now, 0);
    for (const ch of s) {
      const c = ch.codePointAt(0) as number;
      let any = false;
      for (let i = 0; i < m; i++) {
        if (!now[i]) continue;
        const a = args[i] as number;
        switch (kinds[i]) {
          case CHAR:
            if (c === a) reach(next, i + 1);
            break;
          case ONE_CHAR:
            if (c !== sepCode) reach(next, i + 1);
            break;
          case RUN:
            if (c !== sepCode) reach(next, i);
            break;
          case ANY_RUN:
            reach(next, i);
            break;
          case IN_SET:
            if (c !== sepCode && inSet(p, a, c)?.hit) reach(next, i + 1);
            break;
        }
      }
      for (let i = 0; i <= m && !any; i++) any = next[i] === 1;
      if (!any) return false;
      [now, next] = [next, now];
      next.fill(0);
    }
    return now[m] === 1;
  };
}
