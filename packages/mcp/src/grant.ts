import { authorizationTarget, decodeToken, effectiveGrant, type Grant, grantAllows, matchOp, storageList } from "@kpip/protocol";
import type { OpDecl } from "./schema.js";

/**
 * What the gateway's tokens allow, computed with the same pattern rules the kernel enforces
 * (`@kpip/protocol`). It only decides what to *list*: every call is still decided by the
 * kernel, so a stale or wrong list can never widen anything.
 */
export class GrantView {
  private readonly grants: Grant[];

  constructor(tokens: string[]) {
    this.grants = tokens.map((t) => effectiveGrant(decodeToken(Buffer.from(t, "base64url"))));
  }

  private live(): Grant[] {
    const now = Date.now();
    return this.grants.filter((g) => g.usable && g.nbf <= now && now < g.exp);
  }

  /**
   * The target patterns under which the tokens allow `op` on one of `schemes` (empty: the op
   * is not granted anywhere). A target caveat narrows the rights; it is listed beside them.
   */
  targetsFor(op: string, schemes: string[]): string[] {
    const out = new Set<string>();
    const fits = (p: string) => p === "**" || schemes.some((s) => p.startsWith(`${s}://`));
    for (const g of this.live()) {
      if (!g.opFilters.every((f) => f.some((p) => matchOp(p, op)))) continue;
      if (!g.targetFilters.every((f) => f.some(fits))) continue;
      // A rights caveat keeps pairs: the op must be granted with a target of these schemes in each.
      if (!g.pairFilters.every((f) => f.some((r) => matchOp(r.ops[0] as string, op) && fits(r.targets[0] as string)))) continue;
      for (const r of g.rights) {
        if (!r.ops.some((p) => matchOp(p, op))) continue;
        for (const t of r.targets) if (fits(t)) out.add(t);
      }
    }
    return [...out];
  }

  /**
   * Would one of the tokens allow `op` on this exact `target`? (To skip requests sure to be
   * refused.) An op that reaches the subtree under its target (`reach`, from its declaration)
   * needs a grant covering all of it, as the kernel decides.
   */
  allows(op: string, target: string, decl?: { reach?: "subtree" | undefined }): boolean {
    const over = authorizationTarget(decl, target);
    return this.live().some((g) => grantAllows(g, op, over));
  }

  /**
   * The ops of the kernel's table these tokens allow somewhere, with their target patterns. An op
   * is allowed by the name the kernel authorizes it as (`authorizeAs`: storage.upload.* by
   * storage.write), exactly as the kernel decides.
   */
  allowedOps(table: OpDecl[]): { decl: OpDecl; targets: string[] }[] {
    return table
      .map((decl) => ({ decl, targets: this.targetsFor(decl.authorizeAs ?? decl.op, decl.targets) }))
      .filter((x) => x.targets.length > 0)
      .sort((a, b) => (a.decl.op < b.decl.op ? -1 : 1));
  }

  /**
   * obj:// prefixes to list as MCP resources: each granted storage.list pattern over a whole
   * subtree, without its `/**` (obj://ws1/notes/** → obj://ws1/notes), when the tokens allow
   * listing it. The kernel lists a prefix only for a grant covering everything under it, so a
   * pattern with a `*` anywhere, or ending other than in `/**` (obj://ws1/notes/*), names no
   * prefix it would list. Patterns without a workspace are skipped: listing needs one.
   */
  listPrefixes(): string[] {
    const out = new Set<string>();
    for (const p of this.targetsFor("storage.list", ["obj"])) {
      if (!p.startsWith("obj://") || !p.endsWith("/**")) continue;
      const prefix = p.slice(0, -"/**".length);
      const segs = prefix.slice("obj://".length).split("/");
      if (segs[0] === "" || segs.some((s) => s === "*" || s === "**")) continue;
      if (this.allows(storageList.op, prefix, storageList)) out.add(prefix);
    }
    // A prefix inside another listed prefix would list its objects twice.
    return [...out].filter((p) => ![...out].some((q) => q !== p && p.startsWith(`${q}/`))).sort();
  }
}
