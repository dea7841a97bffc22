import type { TokenBound, TokenRecord, TokenStore } from "../types.js";
import { idArgs, inTreeSql, type Row, type StoreBase, treeArgs, type WithRows } from "./base.js";
import { boundedCell, MAX_CELL_BYTES } from "./cells.js";
import { insertViewers } from "./schema.js";

/** The longest id or name read from these tables (token ids are 32 hex, persona names at most 255 bytes). */
const ID_BYTES = 256;

/** A token row with its revocation, each value bounded (cells.ts): names past 256 bytes read as "?", a chain past MAX_CELL_BYTES as none. */
const TOKEN = [
  boundedCell("t.id", ID_BYTES, "'?'", "id"),
  boundedCell("t.kid", ID_BYTES, "'?'", "kid"),
  boundedCell("t.sub", ID_BYTES, "'?'", "sub"),
  boundedCell("t.chain", MAX_CELL_BYTES, "NULL", "chain"),
  "t.exp",
  boundedCell("t.minted_by", ID_BYTES, "'?'", "minted_by"),
  "t.created_at",
  boundedCell("t.family", ID_BYTES, "'?'", "family"),
  boundedCell("t.bounds", MAX_CELL_BYTES, "NULL", "bounds"),
  boundedCell("t.copy_of", ID_BYTES, "NULL", "copy_of"),
  "v.revoked_at",
].join(", ");

/** Minted tokens (their chains and expiry) and revocations. */
export function TokenRows<B extends StoreBase>(Base: B): WithRows<B, TokenStore> {
  return class TokenRows extends Base implements TokenStore {
    recordToken(r: Omit<TokenRecord, "revokedAt">): void {
      this.transaction(() => {
        const seq = this.prep(
          "INSERT INTO tokens (id, kid, sub, chain, exp, minted_by, created_at, family, bounds, copy_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ).run(
          r.id,
          r.kid,
          r.sub,
          JSON.stringify(r.chain),
          r.exp,
          r.mintedBy,
          r.createdAt,
          r.family,
          r.bounds?.length ? JSON.stringify(r.bounds) : null,
          r.copyOf ?? r.id,
        ).lastInsertRowid;
        this.prep(insertViewers("t.rowid = ?")).run(seq, seq, seq);
      });
    }
    listTokensSeenBy(tree: string, sub: string | undefined, after: number, limit: number): TokenRecord[] {
      // The tree's rows first (one index range), then those tokens: the table's other rows are never read.
      const seen = `SELECT DISTINCT token_seq FROM token_viewers WHERE ${inTreeSql("viewer")} AND token_seq > ?`;
      const sql = `SELECT t.rowid AS seq, ${TOKEN} FROM tokens t LEFT JOIN revocations v ON v.id = t.id WHERE t.rowid IN (${seen})`;
      const rows = (
        sub === undefined
          ? this.prep(`${sql} ORDER BY t.rowid LIMIT ?`).all(...treeArgs(tree), after, limit)
          : this.prep(`${sql} AND t.sub = ? ORDER BY t.rowid LIMIT ?`).all(...treeArgs(tree), after, sub, limit)
      ) as Row[];
      return rows.map(toToken);
    }
    tokenSeenBy(id: string, tree: string): boolean {
      return (
        this.prep(
          `SELECT 1 FROM tokens t JOIN token_viewers w ON w.token_seq = t.rowid WHERE t.id = ? AND ${inTreeSql("w.viewer")} LIMIT 1`,
        ).get(id, ...treeArgs(tree)) !== undefined
      );
    }
    unrevokedTokensOfTree(tree: string): string[] {
      // Two index ranges (tokens_sub, tokens_minted_by), not a scan of the table.
      const rows = this.prep(
        `SELECT ${boundedCell("t.id", ID_BYTES, "NULL", "id")} FROM tokens t WHERE t.rowid IN ` +
          `(SELECT rowid FROM tokens WHERE ${inTreeSql("sub")} UNION SELECT rowid FROM tokens WHERE ${inTreeSql("minted_by")}) ` +
          "AND NOT EXISTS (SELECT 1 FROM revocations v WHERE v.id = t.id) ORDER BY t.rowid",
      ).all(...treeArgs(tree), ...treeArgs(tree)) as Row[];
      // An id past the bound is no token's (ids are 32 hex): left out.
      return rows.map((r) => r.id as string | null).filter((id): id is string => id !== null);
    }
    liveTokensFor(tree: string | undefined, now: number): string[] {
      // A tree is one index range (tokens_sub); the agent namespace (a segment beginning "agent.",
      // GLOB being case-sensitive as the namespace is) is a scan, made once at a start.
      const where = tree === undefined ? "(t.sub GLOB 'agent.*' OR t.sub GLOB '*/agent.*')" : inTreeSql("t.sub");
      const rows = this.prep(
        `SELECT ${boundedCell("t.id", ID_BYTES, "NULL", "id")} FROM tokens t WHERE ${where} AND t.exp > ? ` +
          "AND NOT EXISTS (SELECT 1 FROM revocations v WHERE v.id = t.id) ORDER BY t.rowid",
      ).all(...(tree === undefined ? [] : treeArgs(tree)), now) as Row[];
      return rows.map((r) => r.id as string | null).filter((id): id is string => id !== null);
    }
    liveRootTokens(sub: string, now: number): string[] {
      const rows = this.prep(
        `SELECT ${boundedCell("t.id", ID_BYTES, "NULL", "id")} FROM tokens t WHERE t.minted_by = 'kernel' AND t.sub = ? AND t.exp > ? ` +
          "AND NOT EXISTS (SELECT 1 FROM revocations v WHERE v.id = t.id) ORDER BY t.rowid",
      ).all(sub, now) as Row[];
      return rows.map((r) => r.id as string | null).filter((id): id is string => id !== null);
    }
    getToken(id: string): TokenRecord | undefined {
      const r = this.prep(`SELECT ${TOKEN} FROM tokens t LEFT JOIN revocations v ON v.id = t.id WHERE t.id = ?`).get(id) as
        | Row
        | undefined;
      return r && toToken(r);
    }
    listTokens(sub?: string, after = 0, limit = -1): TokenRecord[] {
      const sql = `SELECT t.rowid AS seq, ${TOKEN} FROM tokens t LEFT JOIN revocations v ON v.id = t.id WHERE t.rowid > ?`;
      const rows = (
        sub === undefined
          ? this.prep(`${sql} ORDER BY t.rowid LIMIT ?`).all(after, limit)
          : this.prep(`${sql} AND t.sub = ? ORDER BY t.rowid LIMIT ?`).all(after, sub, limit)
      ) as Row[];
      return rows.map(toToken);
    }
    disownTokens(tree: string, heir?: string, alone = false): void {
      const args = alone ? idArgs(tree) : treeArgs(tree);
      this.transaction(() => {
        // To the heir (a row it has already stays once), then whatever is left of the tree's goes.
        if (heir !== undefined)
          this.prep(`UPDATE OR IGNORE token_viewers SET viewer = ? WHERE ${inTreeSql("viewer")}`).run(heir, ...args);
        this.prep(`DELETE FROM token_viewers WHERE ${inTreeSql("viewer")}`).run(...args);
      });
    }
    tokensDerivedFrom(id: string): TokenRecord[] {
      // Chains are JSON arrays of 32-hex ids: the quoted id matches only a whole element.
      const rows = this.prep(
        `SELECT ${TOKEN} FROM tokens t LEFT JOIN revocations v ON v.id = t.id WHERE octet_length(t.chain) <= ${MAX_CELL_BYTES} AND t.chain LIKE ? ORDER BY t.rowid`,
      ).all(`%"${id.replace(/[^0-9a-f]/g, "")}"%`) as Row[];
      return rows.map(toToken);
    }
    tokensDerivedFromAny(ids: readonly string[]): Map<string, TokenRecord[]> {
      // One pass over the table for all of `ids` (a persona tree's removal revokes many at once),
      // each chain's elements compared whole, as tokensDerivedFrom's quoted match does.
      const rows = this.prep(
        `SELECT j.value AS ancestor, ${TOKEN} FROM tokens t ` +
          `JOIN json_each(CASE WHEN octet_length(t.chain) <= ${MAX_CELL_BYTES} AND json_valid(t.chain) THEN t.chain ELSE '[]' END) j ` +
          "LEFT JOIN revocations v ON v.id = t.id WHERE j.value IN (SELECT value FROM json_each(?)) ORDER BY t.rowid",
      ).all(JSON.stringify(ids)) as Row[];
      const out = new Map<string, TokenRecord[]>();
      for (const r of rows) {
        const list = out.get(r.ancestor as string) ?? [];
        out.set(r.ancestor as string, list);
        const t = toToken(r);
        // A chain naming an ancestor twice is one token derived from it.
        if (list[list.length - 1]?.id !== t.id) list.push(t);
      }
      return out;
    }
    countTokensBy(mintedBy: string): number {
      // The persona and every id under it: one index range.
      return (
        this.prep(`SELECT count(*) AS n FROM tokens WHERE ${inTreeSql("minted_by")}`).get(...treeArgs(mintedBy)) as { n: number }
      ).n;
    }
    pruneTokensBy(mintedBy: string, before: number): number {
      return this.prep(`DELETE FROM tokens WHERE ${inTreeSql("minted_by")} AND exp < ?`).run(...treeArgs(mintedBy), before)
        .changes;
    }
    pruneTokens(before: number): number {
      return this.db.transaction(() => {
        const n = this.prep("DELETE FROM tokens WHERE exp < ?").run(before).changes;
        // A revocation must outlive every token that names the revoked id in its chain: one pass
        // over the remaining chains, not a scan of them per revocation.
        const named = new Set<string>();
        // A chain past the cell bound (tampering) is not read: then no revocation is dropped this time.
        let unread = false;
        for (const r of this.prep(`SELECT ${boundedCell("chain")} FROM tokens`).iterate() as Iterable<{ chain: string | null }>) {
          if (r.chain === null) unread = true;
          else for (const id of JSON.parse(r.chain) as string[]) named.add(id);
        }
        if (unread) return n;
        const gone = this.prep(
          `SELECT ${boundedCell("id", ID_BYTES)} FROM revocations WHERE revoked_at < ? AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.id = revocations.id)`,
        ).all(before) as { id: string | null }[];
        const drop = this.prep("DELETE FROM revocations WHERE id = ?");
        for (const { id } of gone) if (id !== null && !named.has(id)) drop.run(id);
        return n;
      })();
    }
    revokeToken(id: string, by: string, at: number): boolean {
      return (
        this.prep("INSERT OR IGNORE INTO revocations (id, revoked_by, revoked_at) VALUES (?, ?, ?)").run(id, by, at).changes > 0
      );
    }
    revokedTokenIds(): string[] {
      // An id past the bound is no token's (ids are 32 hex): left out, never read.
      return (this.prep(`SELECT ${boundedCell("id", ID_BYTES)} FROM revocations`).all() as Row[])
        .map((r) => r.id as string | null)
        .filter((id): id is string => id !== null);
    }
    noteRevocationSeq(id: string, seq: number): void {
      this.prep("UPDATE revocations SET audit_seq = ? WHERE id = ?").run(seq, id);
    }
    revocationSeqs(): [string, number][] {
      const rows = this.prep(
        `SELECT ${boundedCell("id", ID_BYTES)}, audit_seq FROM revocations WHERE audit_seq IS NOT NULL`,
      ).all() as Row[];
      return rows.filter((r) => r.id !== null).map((r) => [r.id as string, r.audit_seq as number]);
    }
  };
}

function toToken(r: Row): TokenRecord {
  return {
    id: r.id as string,
    kid: r.kid as string,
    sub: r.sub as string,
    // A chain past the bound (tampering) was not read: unknown, as if none (authorization never
    // takes a chain from here: a presented token carries its own).
    chain: typeof r.chain === "string" ? (JSON.parse(r.chain) as string[]) : [],
    exp: r.exp as number,
    mintedBy: r.minted_by as string,
    createdAt: r.created_at as number,
    revokedAt: (r.revoked_at as number | null) ?? null,
    family: (r.family as string | null) ?? (r.id as string),
    // Rows of an older kernel have none: a family of their own.
    copyOf: (r.copy_of as string | null) ?? (r.id as string),
    // Rows of an older kernel have none (and a value past the bound, tampering, reads as none).
    ...(typeof r.bounds === "string" ? { bounds: JSON.parse(r.bounds) as TokenBound[] } : {}),
    ...(r.seq !== undefined ? { seq: r.seq as number } : {}),
  };
}
