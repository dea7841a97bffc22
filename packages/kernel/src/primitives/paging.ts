import type { CborMap } from "@kpip/protocol";
import { MAX_LIST_PAGE } from "../limits.js";
import { PROCESS_CURSORS, type SeqCursors } from "./seq-cursor.js";
import { OpError, type OpResult } from "./types.js";

/** A listing's page as its request asks for it (PROTOCOL §9.3): `limit` rows (default 100, 1…MAX_LIST_PAGE) after `cursor`. */
export interface PageRequest {
  limit: number;
  /** The cursor of the previous page, checked by the listing's pattern; undefined for the first page. */
  cursor: string | undefined;
}

/** The page of a listing whose cursor is the listing position (sequence number) of the last row shown. */
export interface SeqPageRequest extends PageRequest {
  /** The cursor as that position; undefined for the first page. */
  after: number | undefined;
  /** The cursor of a position of this listing, for the answer (opaque: seq-cursor.ts). */
  seal: (seq: number) => string;
}

/**
 * The page of a listing by position (agents, ops, tokens); a cursor that is not one this
 * listing handed out under `cursors`' key is SEMANTIC. The answer's cursors come from `seal`.
 */
export function pageRequest(
  args: { limit?: number; cursor?: string },
  what: string,
  cursors: SeqCursors = PROCESS_CURSORS,
): SeqPageRequest {
  const page = textPageRequest(args, what);
  const seal = (seq: number) => cursors.seal(seq, what);
  if (page.cursor === undefined) return { ...page, after: undefined, seal };
  const after = cursors.open(page.cursor, what);
  if (after === undefined) throw new OpError("SEMANTIC", `cursor is not ${what} cursor of this kernel`);
  return { ...page, after, seal };
}

/**
 * The page of a listing whose cursor is text (a persona id, an object path); a cursor not of
 * the listing's `form` is SEMANTIC. Without a form any text is taken: the listing checks it.
 */
export function textPageRequest(args: { limit?: number; cursor?: string }, what: string, form?: RegExp): PageRequest {
  const cursor = args.cursor;
  if (cursor !== undefined && form !== undefined && !form.test(cursor))
    throw new OpError("SEMANTIC", `cursor is not ${what} cursor`);
  return { limit: Math.min(Math.max(args.limit ?? 100, 1), MAX_LIST_PAGE), cursor };
}

/**
 * The answer for `rows`, read with one more than the page's `limit` (whether more remain is
 * known without a count): SUCCESS with them all, or PARTIAL with `limit` of them and the
 * cursor of the last (`cursorOf`), which asks for the next page. The rows are the caller's to
 * see: a page filtered after it was read would count, and show in its cursor, rows of others.
 */
export function pageAnswer<T>(
  rows: T[],
  page: PageRequest,
  field: string,
  describe: (row: T) => CborMap,
  cursorOf: (row: T) => string,
): OpResult {
  const more = rows.length > page.limit;
  const shown = more ? rows.slice(0, page.limit) : rows;
  const payload: CborMap = { [field]: shown.map(describe) };
  const last = shown[shown.length - 1];
  if (more && last !== undefined) payload.cursor = cursorOf(last);
  return { status: more ? "PARTIAL" : "SUCCESS", payload };
}
