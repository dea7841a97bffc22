import { UsageError } from "../util.js";
import { pathGlob, sqliteGlob } from "./glob.js";

/** Parses a time: an ISO time, or an age like 30s, 10m, 2h, 1d before now. `flag` names it in errors. */
export function parseTime(s: string, flag: string, now = Date.now()): number {
  const m = /^(\d+)([smhd])$/.exec(s);
  if (m) return now - Number(m[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2] as "s" | "m" | "h" | "d"];
  // Only ISO-looking times: Date.parse also takes "1" or "March", which would filter on a guess.
  // A time without a zone is UTC, like every time the tools print (Date.parse would take it as local).
  const iso = /^\d{4}-\d{2}-\d{2}(?:[T ]([0-9:.]+)(Z|[+-]\d{2}:?\d{2})?)?$/.exec(s);
  const t = iso ? Date.parse(iso[1] !== undefined && iso[2] === undefined ? `${s.replace(" ", "T")}Z` : s) : Number.NaN;
  if (Number.isNaN(t))
    throw new UsageError(
      `${flag} must be an ISO time (2026-01-31T12:00:00Z; UTC unless it names a zone) or an age like 10m (got ${JSON.stringify(s)})`,
    );
  return t;
}

/** A positive integer flag. */
export function parsePositive(s: string, flag: string): number {
  const n = /^\d+$/.test(s) ? Number(s) : Number.NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive integer (got ${JSON.stringify(s)})`);
  return n;
}

/** --seq A..B (either end may be left out: A.., ..B) or a single N. */
export function parseSeqRange(s: string): { from: number; to: number } {
  const m = /^(\d*)(?:\.\.(\d*))?$/.exec(s);
  const bad = () => new UsageError(`--seq must be A..B, A.., ..B or N with positive integers, A ≤ B (got ${JSON.stringify(s)})`);
  if (!m || (m[1] === "" && (m[2] === undefined || m[2] === ""))) throw bad();
  const from = m[1] === "" ? 1 : Number(m[1]);
  const to = m[2] === undefined ? from : m[2] === "" ? Number.MAX_SAFE_INTEGER : Number(m[2]);
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 1 || to < from) throw bad();
  return { from, to };
}

/**
 * Longest --persona/--op/--target pattern (characters): twice the longest target (2,048 bytes);
 * no persona id (255), op (128) or target is longer, so a longer pattern is a mistake, and each
 * record's test costs up to pattern × value length.
 */
export const MAX_PATTERN = 4096;

function bounded(pattern: string, flag: string): void {
  if (pattern.length > MAX_PATTERN)
    throw new UsageError(`${flag} is a pattern of at most ${MAX_PATTERN} characters (got ${pattern.length})`);
}

/**
 * `kpip audit timeline`'s --persona, --op and --target: a path glob over names whose segments
 * `sep` separates (see pathGlob in glob.ts): `*` any run within one segment, `**` any run across
 * segments, `?` one character and `[…]` one character of a set (never `sep`), and a trailing
 * `/**` (or `.**`) also matches the bare prefix (`alice/**` is alice and every sub-persona of
 * hers). Every other character, regular-expression ones included, is itself. Without any of
 * `*`, `?`, `[` the pattern is a prefix when `prefix` is set, else an exact name. `flag` names
 * it in a UsageError (a pattern over MAX_PATTERN characters).
 */
export function globMatcher(pattern: string, sep: "/" | ".", prefix = false, flag = "the pattern"): (s: string) => boolean {
  bounded(pattern, flag);
  if (!/[*?[]/.test(pattern)) return prefix ? (s) => s.startsWith(pattern) : (s) => s === pattern;
  const glob = pathGlob(pattern, sep);
  const bare = pattern.endsWith(`${sep}**`) ? pathGlob(pattern.slice(0, -3), sep) : undefined;
  return (s) => glob(s) || (bare?.(s) ?? false);
}

/** The trace id of a W3C traceparent (00-<trace id>-<span id>-<flags>), or the value itself. */
export function traceId(tp: string | null): string | null {
  if (tp === null) return null;
  const m = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(tp);
  return m ? (m[1] as string) : tp;
}

/** Token ids in a record's caps column ("h1:<id>,inline:<id>"). */
/**
 * The tokens a record says did its request: for a request that ran (its intent, outcome, complete
 * or replay record) the last capability its `caps` names — the kernel examines them in the order
 * presented and stops at the first that allows, so those before it were refused or did not allow
 * (PROTOCOL §16); for a refusal or a session's record, every one named.
 */
export function recordTokenIds(phase: string, caps: string | null): string[] {
  const ids = capTokenIds(caps);
  return ids.length > 1 && RAN.has(phase) ? ids.slice(-1) : ids;
}
const RAN = new Set(["intent", "outcome", "complete", "replay"]);

/**
 * The token ids a caps column names. A token whose signature did not verify (`unverified:<id>`)
 * only claims its id, which anyone can write: it is shown as `?<id>`, which no `--token` matches.
 */
export function capTokenIds(caps: string | null): string[] {
  if (!caps) return [];
  return caps
    .split(",")
    .map((c) => (c.startsWith("unverified:") ? `?${c.slice(11)}` : c.slice(c.indexOf(":") + 1)))
    .filter((id) => id !== "" && id !== "?");
}

/**
 * A --persona or --op value as a test: exact, or (with any of `*`, `?`, `[`) a glob with SQLite's
 * GLOB semantics (`*` any run, `?` one character, `[…]` a set; see glob.ts) and `**` as `*`;
 * P/** also matches P itself. The filter these commands ran in SQL before the fields moved into
 * the records' bytes, except that a `?` or `[` without a `*` was taken as an exact name (no
 * persona id or op name holds either). `flag` names it in a UsageError (over MAX_PATTERN characters).
 */
export function patternTest(pattern: string, flag = "the pattern"): (v: string | null) => boolean {
  bounded(pattern, flag);
  if (!/[*?[]/.test(pattern)) return (v) => v === pattern;
  const glob = sqliteGlob(pattern.replace(/\*\*/g, "*"));
  const bare = pattern.endsWith("/**") ? pattern.slice(0, -3) : undefined;
  return (v) => v !== null && (glob(v) || v === bare);
}
