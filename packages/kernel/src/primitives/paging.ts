import type { CborMap } from "@kpip/protocol";
import { MAX_LIST_PAGE } from "../limits.js";
import { OpError, type OpResult } from "./types.js";

/** A listing's page as its request asks for it (PROTOCOL §9.3): `limit` rows (default 100, 1…MAX_LIST_PAGE) after `cursor`. */
export interface PageRequest {
  limit: number;
  /** The cursor of the previous page, checked by the listing's pattern; undefined for the first page. */
  cursor: string | undefined;
}

/** The page a listing's `limit` and `cursor` arguments ask for; a cursor not of this listing's form is SEMANTIC. */
export function pageRequest(args: { limit?: number; cursor?: string }, what: string, form: RegExp = /^\d{1,15}$/): PageRequest {
  const cursor = args.cursor;
  if (cursor !== undefined && !form.test(cursor)) throw new OpError("SEMANTIC", `cursor is not ${what} cursor`);
  return { limit: Math.min(Math.max(args.limit ?? 100, 1), MAX_LIST_PAGE), cursor };
}

/**
 * The answer for `rows`, read with one more than the page's `limit` (whether more remain is
 * known without a count): SUCCESS with them all, or PARTIAL with `limit` of them and the
 * cursor of the last (`cursorOf`), which asks for the next page. `visible`, when given, hides
 * rows of the page from the answer (the page may then hold fewer; the cursor still follows it).
 */
export function pageAnswer<T>(
  rows: T[],
  page: PageRequest,
  field: string,
  describe: (row: T) => CborMap,
  cursorOf: (row: T) => string,
  visible?: (row: T) => boolean,
): OpResult {
  const more = rows.length > page.limit;
  const shown = more ? rows.slice(0, page.limit) : rows;
  const payload: CborMap = { [field]: (visible ? shown.filter(visible) : shown).map(describe) };
  const last = shown[shown.length - 1];
  if (more && last !== undefined) payload.cursor = cursorOf(last);
  return { status: more ? "PARTIAL" : "SUCCESS", payload };
}
