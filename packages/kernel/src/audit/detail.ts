import { effectiveGrant, type Grant, sortKeys, type Token } from "@kpip/protocol";

/**
 * The audit record's `detail` column: compact JSON of one object, keys sorted at every level,
 * so the same facts are always the same bytes (the column is hashed into the chain). Only small
 * fields go there (ids, generations, states, a token's rights), never payload bytes.
 */
export type DetailValue = string | number | boolean | null | DetailValue[] | { [k: string]: DetailValue | undefined };

/** `{...}` as the detail column holds it: sorted keys, no spaces, undefined members left out. */
export function detailJson(v: { [k: string]: DetailValue | undefined }): string {
  return JSON.stringify(sorted(v));
}

function sorted(v: DetailValue | undefined): DetailValue | undefined {
  if (Array.isArray(v)) return v.map((x) => sorted(x) ?? null);
  if (v === null || typeof v !== "object") return v;
  const out: { [k: string]: DetailValue } = {};
  for (const k of sortedKeys(v)) {
    const x = sorted(v[k]);
    if (x === undefined) continue;
    // `out.__proto__ = x` would set the prototype, and the key would vanish from the record.
    if (k === "__proto__") Object.defineProperty(out, k, { value: x, enumerable: true, writable: true, configurable: true });
    else out[k] = x;
  }
  return out;
}

/**
 * `Object.keys(v).sort()`, sorted in place by insertion: a detail has a few keys, and
 * Array.prototype.sort copied them into a work array every call (an op with effects' outcome
 * record has a detail: ~1 KB of garbage a `storage.write`). The default sort's order: UTF-16
 * code units, which is how `>` compares strings.
 */
export function sortedKeys(v: object): string[] {
  const keys = Object.keys(v);
  sortKeys(keys, utf16Order);
  return keys;
}

/** Array.prototype.sort's default order (keys are distinct: never equal). */
const utf16Order = (a: string, b: string): number => (a > b ? 1 : -1);

/** Outcome summaries that hold only the status: built once, not per request. */
const STATUS_ONLY: Record<string, string> = {};
export function statusDetail(status: string, ids?: { [k: string]: DetailValue | undefined }): string {
  if (ids) return detailJson({ ...ids, status });
  let s = STATUS_ONLY[status];
  if (s === undefined) {
    s = detailJson({ status });
    if (Object.keys(STATUS_ONLY).length < 16) STATUS_ONLY[status] = s;
  }
  return s;
}

/** Most (op, target) pairs a token's detail lists; a wider token says how many there were. */
const MAX_PAIRS = 256;
/**
 * Most characters of op and target those pairs hold: they are the product of each right's ops and
 * targets, so 64 ops on 4 targets of 1,800 characters (an 8 KiB token) listed half a MiB on
 * every mint's and agent spawn's record (case 627). A few times the token's own size.
 */
const MAX_PAIRS_CHARS = 16 * 1024;

/**
 * A token as its audit records describe it: `{id, parent, sub, rights, caveats, exp}`, rights as
 * (op, target) pairs. `id` is the token's own id (derived for one attenuated offline), `parent`
 * what it came from (the minting or refreshed token; for a derived token its minted id).
 */
export function tokenDetail(t: Token, g: Grant = effectiveGrant(t), parentId?: string): { [k: string]: DetailValue } {
  const pairs: DetailValue[] = [];
  let total = 0;
  let chars = 0;
  for (const r of t.claims.rights)
    for (const o of r.ops)
      for (const x of r.targets) {
        total++;
        // The first pairs only (a prefix of the list), as many as both bounds allow.
        if (pairs.length === total - 1 && pairs.length < MAX_PAIRS && chars + o.length + x.length <= MAX_PAIRS_CHARS) {
          chars += o.length + x.length;
          pairs.push([o, x]);
        }
      }
  const chain = t.claims.chain;
  const parent = parentId ?? (g.derived !== undefined ? t.claims.id : (chain[chain.length - 1] ?? null));
  const d: { [k: string]: DetailValue } = {
    id: g.derived ?? t.claims.id,
    parent,
    sub: g.subject,
    rights: pairs,
    caveats: t.caveats as unknown as DetailValue[],
    exp: g.exp,
  };
  if (total > pairs.length) d.rightsTotal = total;
  // A refreshed copy of a derived token: its own id is derived, its minted id is in the token table.
  if (g.derived !== undefined && parent !== t.claims.id) d.minted = t.claims.id;
  return d;
}
