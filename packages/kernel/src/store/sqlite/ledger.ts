import type { Allocation, LedgerStore } from "../types.js";
import { inTreeSql, type Row, type StoreBase, treeArgs, type WithRows } from "./base.js";

/** The resource ledger: usage per scope and resource, and allocations held by personas. */
export function LedgerRows<B extends StoreBase>(Base: B): WithRows<B, LedgerStore> {
  return class LedgerRows extends Base implements LedgerStore {
    usage(scope: string, resource: string): number {
      const r = this.prep("SELECT amount FROM usage WHERE scope = ? AND resource = ?").get(scope, resource) as Row | undefined;
      return (r?.amount as number | undefined) ?? 0;
    }
    usageOf(scope: string): Record<string, number> {
      const rows = this.prep("SELECT resource, amount FROM usage WHERE scope = ?").all(scope) as Row[];
      return Object.fromEntries(rows.map((r) => [r.resource as string, r.amount as number]));
    }
    adjustUsage(scope: string, resource: string, delta: number): void {
      if (delta === 0) return;
      this.prep(
        "INSERT INTO usage (scope, resource, amount) VALUES (?, ?, max(0, ?)) " +
          "ON CONFLICT (scope, resource) DO UPDATE SET amount = max(0, amount + ?)",
      ).run(scope, resource, delta, delta);
      // A row lives while something is used: scopes are persona ids (every agent, every removed
      // sub-persona, every owner an overwrite displaced) and workspace names, without end.
      if (delta < 0) this.prep("DELETE FROM usage WHERE scope = ? AND resource = ? AND amount <= 0").run(scope, resource);
    }
    allUsage(): { scope: string; resource: string; amount: number }[] {
      return this.prep(
        "SELECT scope, resource, amount FROM usage WHERE amount > 0 ORDER BY scope, resource LIMIT 10000",
      ).all() as {
        scope: string;
        resource: string;
        amount: number;
      }[];
    }
    addAllocation(a: Allocation): void {
      this.prep("INSERT INTO allocations (id, persona, resource, amount, created_at) VALUES (?, ?, ?, ?, ?)").run(
        a.id,
        a.persona,
        a.resource,
        a.amount,
        a.createdAt,
      );
    }
    getAllocation(id: string): Allocation | undefined {
      const r = this.prep("SELECT * FROM allocations WHERE id = ?").get(id) as Row | undefined;
      return (
        r && {
          id,
          persona: r.persona as string,
          resource: r.resource as string,
          amount: r.amount as number,
          createdAt: r.created_at as number,
        }
      );
    }
    removeAllocation(id: string): boolean {
      return this.prep("DELETE FROM allocations WHERE id = ?").run(id).changes > 0;
    }
    allocationsWithin(root: string): Allocation[] {
      return (this.prep(`SELECT * FROM allocations WHERE ${inTreeSql("persona")}`).all(...treeArgs(root)) as Row[]).map((r) => ({
        id: r.id as string,
        persona: r.persona as string,
        resource: r.resource as string,
        amount: r.amount as number,
        createdAt: r.created_at as number,
      }));
    }
    countAllocationsWithin(root: string): number {
      return (this.prep(`SELECT count(*) AS n FROM allocations WHERE ${inTreeSql("persona")}`).get(...treeArgs(root)) as Row)
        .n as number;
    }
  };
}
