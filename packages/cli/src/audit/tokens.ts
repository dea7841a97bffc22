import { type AuditReader, type AuditRecord, boundedColumns } from "@kpip/kernel";
import { type CborValue, decodeIntent } from "@kpip/protocol";
import { printable } from "./printable.js";
import { valueJson } from "./show.js";
import { detailValue, iso } from "./timeline.js";

/** One token of the delegation tree, from the token table, the revocations and the records about it. */
export interface TokenNode {
  id: string;
  parent: string | null;
  sub: string | null;
  mintedBy: string | null;
  how: "mint" | "refresh" | "derived" | "kernel";
  created: number | null;
  exp: number | null;
  rights: unknown;
  caveats: unknown;
  /** The record that made it (mint/refresh outcome, or the kernel's token.derived record). */
  record: number | null;
  /** How the record was found: named in its detail, or matched by minter, subject and time. */
  recordBy: "detail" | "time" | null;
  /**
   * `at`: the revocations table's time, taken while the revoke ran (after its intent, before its
   * outcome); `record`/`recordAt`: the record that says it (a token.revoke's outcome), and its time.
   */
  revoked: { by: string; at: number; record: number | null; recordAt?: number | null; ended: string[] } | null;
  /** The nearest revoked ancestor whose revocation ended this token (the cascade). */
  endedBy: string | null;
  children: string[];
  /** In the token table (false: known only from a record, e.g. a derived token). */
  inTable: boolean;
  /** The parent it names, when that closes a loop of parents (a tampered home): shown as a root instead. */
  parentLoop?: string;
  /**
   * Where the token or revocations table says otherwise than the record (who minted it, for
   * whom, who revoked it): the tables are the kernel's working state, outside the chain, so
   * whoever can write the home can change them unseen by `audit verify`. The record's word is shown.
   */
  disputed: string[];
}

type Row = Record<string, unknown>;

function parseDetail(r: AuditRecord): Record<string, unknown> | undefined {
  if (!r.detail) return undefined;
  const d = detailValue(r.detail);
  return d && typeof d === "object" ? (d as Record<string, unknown>) : undefined;
}

/**
 * Rights as [op, target] pairs, the kernel's own form (a right {ops, targets} of a mint request
 * allows each of its ops on each of its targets, so it is those pairs exactly).
 */
export function asPairs(rights: unknown): unknown {
  if (!Array.isArray(rights)) return rights;
  const out: unknown[] = [];
  for (const r of rights) {
    const o = r as { ops?: unknown; targets?: unknown };
    if (o && typeof o === "object" && Array.isArray(o.ops) && Array.isArray(o.targets)) {
      for (const op of o.ops) for (const t of o.targets) out.push([op, t]);
    } else out.push(r);
  }
  return out;
}

/** Mint and refresh requests that succeeded: the intent (its args) and the outcome's time. */
interface MintRequest {
  op: string;
  persona: string;
  target: string;
  start: number;
  end: number;
  seq: number;
  args: CborValue | undefined;
  used: boolean;
}

export function tokenTree(reader: AuditReader): Map<string, TokenNode> {
  const nodes = new Map<string, TokenNode>();
  const tables = new Set(
    (reader.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Row[]).map((r) => r.name),
  );
  const node = (id: string): TokenNode => {
    let n = nodes.get(id);
    if (!n) {
      n = {
        id,
        parent: null,
        sub: null,
        mintedBy: null,
        how: "mint",
        created: null,
        exp: null,
        rights: null,
        caveats: null,
        record: null,
        recordBy: null,
        revoked: null,
        endedBy: null,
        children: [],
        inTable: false,
        disputed: [],
      };
      nodes.set(id, n);
    }
    return n;
  };
  if (tables.has("tokens")) {
    // Each value bounded (a tampered one past MAX_CELL_BYTES reads as null, never into memory).
    for (const r of reader.db
      .prepare(`SELECT ${boundedColumns(reader.db, "tokens")} FROM tokens ORDER BY rowid`)
      .all() as Row[]) {
      if (typeof r.id !== "string") continue;
      const n = node(r.id);
      const last = chainParent(r.chain);
      n.parent = typeof last === "string" ? last : null;
      n.sub = r.sub as string;
      n.mintedBy = r.minted_by as string;
      n.created = r.created_at as number;
      n.exp = r.exp as number;
      n.inTable = true;
      if (r.family !== undefined && r.family !== null && r.family !== r.id) n.how = "refresh";
      else if (n.mintedBy === "kernel") n.how = "kernel";
    }
  }
  if (tables.has("revocations")) {
    const rows = reader.db
      .prepare(`SELECT ${boundedColumns(reader.db, "revocations")} FROM revocations ORDER BY revoked_at`)
      .all();
    for (const r of rows as Row[]) {
      if (typeof r.id !== "string") continue;
      node(r.id).revoked = { by: r.revoked_by as string, at: r.revoked_at as number, record: null, recordAt: null, ended: [] };
    }
  }
  // The records about tokens: the detail when the home has it, else the requests themselves.
  const mints: MintRequest[] = [];
  const intents = new Map<string, AuditRecord>();
  // The fields are in the records' bytes only: every record is decoded, those about tokens kept.
  for (const r of reader.records()) {
    // An agent's token is minted by its spawn: `agent.spawned` describes it in `grant`.
    const spawned = r.op === "agent.spawned" && r.phase === "kernel";
    // A persona's removal revokes the tokens of its tree: its record names them (`ended`; offline, its message).
    if (r.op === "persona.remove") {
      revocationsOf(nodes, r);
      continue;
    }
    if (!spawned && !r.op?.toLowerCase().startsWith("token.")) continue;
    const d = parseDetail(r);
    const t = (spawned ? d?.grant : d?.token) as Record<string, unknown> | undefined;
    if (t && typeof t === "object" && typeof t.id === "string") {
      const n = node(t.id);
      if (typeof t.parent === "string") n.parent = t.parent;
      // The record's word over the table's (which anyone with the home can edit unseen). Its
      // subject is the effective one: a refreshed copy of a narrowed token may name a sub-persona
      // of the table's; only another persona is a disagreement.
      if (typeof t.sub === "string") {
        if (n.inTable && n.sub !== null && n.sub !== t.sub && !t.sub.startsWith(`${n.sub}/`))
          n.disputed.push(`sub: the token table says ${n.sub}, record ${r.seq} ${t.sub}`);
        n.sub = t.sub;
      }
      if (typeof t.exp === "number") n.exp = t.exp;
      if (t.rights !== undefined) n.rights = asPairs(t.rights);
      if (t.caveats !== undefined) n.caveats = t.caveats;
      if (r.op === "token.derived") n.how = "derived";
      // Its minter: the persona of the mint or refresh, the spawner of an agent (a derived token's
      // record names who used it, and it has no row).
      if (r.op !== "token.derived") {
        if (n.inTable && n.mintedBy !== null && n.mintedBy !== r.persona)
          n.disputed.push(`minted by: the token table says ${n.mintedBy}, record ${r.seq} ${r.persona}`);
        n.mintedBy = r.persona;
      }
      n.mintedBy ??= r.persona;
      n.created ??= r.time;
      n.record = r.seq;
      n.recordBy = "detail";
    }
    // The record that revoked a token: `revoked` names it, `mintedFor` the tokens minted for an
    // ended agent's persona that the kernel revoked with it (or, at a start, alone).
    const revokedHere = (id: string) => revokedBy(node(id), r);
    if (d && typeof d.revoked === "string") {
      const rv = revokedHere(d.revoked);
      if (Array.isArray(d.ended)) rv.ended = d.ended.filter((x): x is string => typeof x === "string");
      // A token's refreshed copies, revoked with it, each have a row of their own.
      if (r.op === "token.revoke") revocationsOf(nodes, r);
    }
    if (d && Array.isArray(d.mintedFor))
      for (const id of d.mintedFor) if (typeof id === "string" && id !== d.revoked) revokedHere(id);
    const key = `${r.kernel}\0${r.session}\0${r.requestId}`;
    if (r.phase === "intent") intents.set(key, r);
    else if (r.phase === "outcome") {
      const i = intents.get(key);
      intents.delete(key);
      if (r.status !== "SUCCESS" || !r.target) continue;
      if (r.op === "token.revoke") {
        const n = nodes.get(r.target.slice("token://".length));
        if (n?.revoked && n.revoked.record === null) revokedBy(n, r);
      } else if ((r.op === "token.mint" || r.op === "token.refresh") && i) {
        let args: CborValue | undefined;
        try {
          args = i.intent ? decodeIntent(i.intent).args : undefined;
        } catch {
          args = undefined;
        }
        mints.push({ op: r.op, persona: r.persona, target: r.target, start: i.time, end: r.time, seq: r.seq, args, used: false });
      }
    }
  }
  // Without detail: a table row is matched to the request that made it by minter, subject and time.
  for (const n of nodes.values()) {
    if (!n.inTable || n.record !== null || n.created === null) continue;
    const m = mints.find(
      (x) =>
        !x.used &&
        x.persona === n.mintedBy &&
        x.start <= (n.created as number) &&
        (n.created as number) <= x.end &&
        (x.op === "token.refresh" ? x.target === `token://${n.parent}` : x.target === `persona://${n.sub}`),
    );
    if (!m) continue;
    m.used = true;
    n.record = m.seq;
    n.recordBy = "time";
    if (m.op === "token.refresh") n.how = "refresh";
    const rights = (m.args as Record<string, CborValue> | undefined)?.rights;
    if (n.rights === null && rights !== undefined) n.rights = asPairs(valueJson(rights));
  }
  cutLoops(nodes);
  // Children, the rights a refresh inherits, and what each revocation's cascade ended: parents
  // before children (walk's order), each from its parent's, so no chain is walked twice.
  for (const n of nodes.values()) if (n.parent) nodes.get(n.parent)?.children.push(n.id);
  /** Each token's ancestor whose revocation ended it: the earliest revoked, the farthest of equals. */
  const causes = new Map<string, TokenNode>();
  for (const { node: n } of walk(nodes)) {
    const p = n.parent ? nodes.get(n.parent) : undefined;
    if (!p) continue;
    if (n.rights === null && n.how === "refresh") n.rights = p.rights;
    const above = causes.get(p.id);
    const cause = p.revoked && !(above?.revoked && above.revoked.at <= p.revoked.at) ? p : above;
    if (cause) causes.set(n.id, cause);
  }
  for (const n of nodes.values()) {
    const cause = causes.get(n.id);
    if (!cause?.revoked) continue;
    // A token with a revocation of its own was ended by an ancestor's only when that came first
    // (an agent's token ended by its spawner's revocation, then revoked by the kernel at its end).
    if (n.revoked && n.revoked.at < cause.revoked.at) continue;
    // A token that had expired before the revocation was not ended by it.
    if (n.exp !== null && n.exp <= cause.revoked.at) continue;
    n.endedBy = cause.id;
    if (!cause.revoked.ended.includes(n.id)) cause.revoked.ended.push(n.id);
  }
  return nodes;
}

/**
 * `r` revoked `n`: the record says by whom (its persona; the kernel's own `token.revoked`, the
 * kernel) and where; a revocations table that names another revoker is a disagreement.
 */
function revokedBy(n: TokenNode, r: AuditRecord): NonNullable<TokenNode["revoked"]> {
  const by = r.phase === "kernel" ? "kernel" : r.persona;
  if (n.revoked && n.revoked.record === null && n.revoked.by !== by)
    n.disputed.push(`revoked by: the revocations table says ${n.revoked.by}, record ${r.seq} ${by}`);
  n.revoked ??= { by, at: r.time, record: null, recordAt: null, ended: [] };
  n.revoked.by = by;
  n.revoked.record = r.seq;
  n.revoked.recordAt = r.time;
  return n.revoked;
}

/**
 * The revocations table's rows a revocation's record names among what it ended (a persona's
 * removal; the refreshed copies a token's revocation ended with it) and no other record claims:
 * tied to it. An offline removal's record names them in its message, its revoker the CLI.
 */
function revocationsOf(nodes: Map<string, TokenNode>, r: AuditRecord): void {
  let ids: unknown[] = [];
  if (r.phase === "offline") ids = r.message?.match(/\b[0-9a-f]{32}\b/g) ?? [];
  else if (r.phase === "outcome" && r.status === "SUCCESS") {
    const ended = parseDetail(r)?.ended;
    if (Array.isArray(ended)) ids = ended;
  }
  for (const id of ids) {
    const n = typeof id === "string" ? nodes.get(id) : undefined;
    if (!n?.revoked || n.revoked.record !== null) continue;
    if (r.phase === "offline") {
      n.revoked.record = r.seq;
      n.revoked.recordAt = r.time;
    } else revokedBy(n, r);
  }
}

/** The last id of a token row's stored chain (its parent), or null; a tampered value is no parent. */
function chainParent(chain: unknown): unknown {
  if (typeof chain !== "string") return null;
  try {
    const c = JSON.parse(chain);
    return Array.isArray(c) ? (c.at(-1) ?? null) : null;
  } catch {
    return null;
  }
}

/**
 * A tampered token table (or record) can name a token its own ancestor (its chain ends in its
 * own id, or two name each other): every walk up or down the tree would then never end. Each
 * loop is cut where a walk up closes it, that token shown as a root; linear in the tokens.
 */
function cutLoops(nodes: Map<string, TokenNode>): void {
  const state = new Map<string, "walking" | "done">();
  for (const start of nodes.values()) {
    const path: TokenNode[] = [];
    let n: TokenNode | undefined = start;
    while (n && !state.has(n.id)) {
      state.set(n.id, "walking");
      path.push(n);
      n = n.parent ? nodes.get(n.parent) : undefined;
    }
    const last = path.at(-1);
    if (n && state.get(n.id) === "walking" && last?.parent) {
      last.parentLoop = last.parent;
      last.parent = null;
    }
    for (const p of path) state.set(p.id, "done");
  }
}

/** Roots first (tokens whose parent is not known), then each subtree depth-first, in creation order. */
export function walk(nodes: Map<string, TokenNode>, only?: string): { node: TokenNode; depth: number }[] {
  const out: { node: TokenNode; depth: number }[] = [];
  const byCreated = (a: string, b: string) => (nodes.get(a)?.created ?? 0) - (nodes.get(b)?.created ?? 0);
  // Iterative: a tampered table may chain tokens deeper than the stack.
  const visit = (id: string, depth: number) => {
    const stack: [string, number][] = [[id, depth]];
    for (let top = stack.pop(); top; top = stack.pop()) {
      const n = nodes.get(top[0]) as TokenNode;
      out.push({ node: n, depth: top[1] });
      const kids = [...n.children].sort(byCreated).reverse();
      for (const c of kids) stack.push([c, top[1] + 1]);
    }
  };
  if (only !== undefined) {
    // One token: its ancestors down to it, then its subtree.
    const up: TokenNode[] = [];
    for (let n = nodes.get(only); n; n = n.parent ? nodes.get(n.parent) : undefined) up.unshift(n);
    up.slice(0, -1).forEach((n, i) => {
      out.push({ node: n, depth: i });
    });
    visit(only, up.length - 1);
    return out;
  }
  const roots = [...nodes.values()].filter((n) => !n.parent || !nodes.has(n.parent)).map((n) => n.id);
  for (const r of roots.sort(byCreated)) visit(r, 0);
  return out;
}

export function nodeJson(n: TokenNode, depth: number): Record<string, unknown> {
  return {
    id: n.id,
    depth,
    parent: n.parent,
    sub: n.sub,
    mintedBy: n.mintedBy,
    how: n.how,
    created: iso(n.created),
    exp: iso(n.exp),
    rights: n.rights,
    caveats: n.caveats,
    record: n.record,
    recordBy: n.recordBy,
    revoked: n.revoked ? { ...n.revoked, at: iso(n.revoked.at), recordAt: iso(n.revoked.recordAt ?? null) } : null,
    endedBy: n.endedBy,
    children: n.children,
    inTable: n.inTable,
    parentLoop: n.parentLoop ?? null,
    disputed: n.disputed,
  };
}

/** Rights for people: "storage.read on obj://ws1/**; …". */
function rightsText(r: unknown): string {
  if (!Array.isArray(r)) return r === null ? "unknown (no mint record)" : JSON.stringify(r);
  return r.map((x) => (Array.isArray(x) && x.length === 2 ? `${x[0]} on ${x[1]}` : JSON.stringify(x))).join("; ");
}

/** Levels of indentation shown: a token's chain is at most 32 long (PROTOCOL's claims.chain). */
const MAX_INDENT = 32;

export function treeText(items: { node: TokenNode; depth: number }[], nodes: Map<string, TokenNode>): string {
  const lines: string[] = [];
  for (const { node: n, depth } of items) {
    // Indented up to a kernel's deepest chain: a tampered table's deeper ones would make the text quadratic.
    const pad = "  ".repeat(Math.min(depth, MAX_INDENT));
    const deeper = depth > MAX_INDENT ? `[depth ${depth}] ` : "";
    const made = n.record !== null ? ` (record ${n.record}${n.recordBy === "time" ? ", matched by time" : ""})` : "";
    const how = n.how === "kernel" ? "minted by the kernel" : `${n.how} by ${n.mintedBy ?? "?"}`;
    lines.push(`${pad}${depth ? "└─ " : ""}${deeper}${n.id}  for ${n.sub ?? "?"}, ${how} at ${iso(n.created) ?? "?"}${made}`);
    const sub = `${pad}${depth ? "   " : ""}   `;
    if (n.parent && !nodes.has(n.parent)) lines.push(`${sub}parent ${n.parent} is not in the token table (pruned)`);
    if (n.parentLoop) lines.push(`${sub}parent ${n.parentLoop} closes a loop of parents (a tampered home): shown as a root`);
    lines.push(`${sub}rights  ${rightsText(n.rights)}`);
    if (n.caveats !== null) lines.push(`${sub}caveats ${JSON.stringify(n.caveats)}`);
    lines.push(`${sub}expires ${iso(n.exp) ?? "?"}`);
    if (n.revoked) {
      // The record's time too: the table's is taken mid-request, before the outcome that says it;
      // read against other records (an agent's last acts), the record's place is what counts.
      const rec =
        n.revoked.record !== null
          ? ` (record ${n.revoked.record}${n.revoked.recordAt != null ? `, written ${iso(n.revoked.recordAt)}` : ""})`
          : " (no record says so: the revocations table alone — its record pruned or lost, or the table changed outside the kernel)";
      lines.push(`${sub}REVOKED by ${n.revoked.by} at ${iso(n.revoked.at)}${rec}`);
      if (n.revoked.ended.length) lines.push(`${sub}its revocation ended ${n.revoked.ended.join(", ")}`);
    }
    if (n.endedBy)
      lines.push(`${sub}ended by the revocation of ${n.endedBy}${n.revoked ? ", before its own revocation above" : ""}`);
    for (const d of n.disputed)
      lines.push(`${sub}THE TOKEN TABLE DISAGREES (changed outside the kernel?): ${d}; the record's is shown`);
  }
  return lines.length ? `${lines.map((t) => printable(t)).join("\n")}\n` : "no tokens\n";
}

/** `s` inside a Graphviz quoted string: unprintable characters (a line break too) shown escaped, then its backslashes and quotes escaped. */
function dotText(s: string): string {
  return printable(s).replace(/[\\"]/g, (c) => `\\${c}`);
}

/** Graphviz: one box per token, an edge from parent to child; revoked red, ended by a cascade orange. */
export function treeDot(items: { node: TokenNode; depth: number }[]): string {
  const q = (s: string) => JSON.stringify(s);
  const lines = ["digraph tokens {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"];
  const seen = new Set(items.map((i) => i.node.id));
  for (const { node: n } of items) {
    // Each field escaped for a dot string (a backslash too: `\\"` in a tampered table's text
    // would otherwise end the label), then joined with dot's own line breaks.
    const fields = [n.id.slice(0, 8), n.sub ?? "?", `${n.how} by ${n.mintedBy ?? "?"}`];
    if (n.revoked) fields.push(`revoked by ${n.revoked.by}`);
    const label = fields.map(dotText).join("\\n");
    const style = n.revoked ? ", color=red" : n.endedBy ? ", color=orange, style=dashed" : "";
    lines.push(`  ${q(n.id)} [label="${label}"${style}];`);
    if (n.parent && seen.has(n.parent)) lines.push(`  ${q(n.parent)} -> ${q(n.id)};`);
  }
  lines.push("}");
  // Printed to a terminal as often as piped to dot: a tampered table's text must not drive it.
  return `${printable(lines.join("\n"), "\n")}\n`;
}
