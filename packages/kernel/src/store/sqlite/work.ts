import {
  type AgentRecord,
  type AgentState,
  type AgentStore,
  type AgentSummary,
  type OpRecord,
  type OpStore,
  type OpSummary,
  REMOVED_SPAWN,
  type RunningAgent,
  type UnrecordedAgentEnd,
} from "../types.js";
import {
  columnMap,
  columnOf,
  idArgs,
  inTreeSql,
  pickColumns,
  type Row,
  rowReader,
  type StoreBase,
  treeArgs,
  type WithRows,
} from "./base.js";

/** An agent's columns without its output (listings read these only). */
type AgentMeta = Omit<AgentRecord, "stdout" | "stderr">;
const AGENT_META_FIELDS: { [K in keyof AgentMeta]-?: true } = {
  id: true,
  persona: true,
  spawner: true,
  command: true,
  args: true,
  pid: true,
  state: true,
  exitCode: true,
  signal: true,
  startedAt: true,
  endedAt: true,
  deadline: true,
  tokenId: true,
  cwd: true,
  procId: true,
  spawnerSpawn: true,
};

/** An op's columns without its result (listings read these only). */
const OP_SUMMARY_FIELDS: { [K in keyof OpSummary]-?: true } = {
  id: true,
  persona: true,
  session: true,
  kind: true,
  name: true,
  state: true,
  errorClass: true,
  message: true,
  createdAt: true,
  startedAt: true,
  finishedAt: true,
  deadline: true,
  expiresAt: true,
  spawn: true,
};

/** The fields of an agent record an update may set, and their columns. */
const AGENT_UPDATES = columnMap(["pid", "state", "exitCode", "signal", "endedAt"] satisfies (keyof AgentRecord)[]);

/** An agent's output, kept in agent_output (schema.ts: a listing must not read it). */
const OUTPUT_UPDATES = columnMap(["stdout", "stderr"] satisfies (keyof AgentRecord)[]);

/** The fields of an op record an update may set, and their columns. */
const OP_UPDATES = columnMap([
  "state",
  "errorClass",
  "message",
  "startedAt",
  "finishedAt",
  "expiresAt",
] satisfies (keyof OpRecord)[]);

/** A record's columns as SQL (`prefix`: a join's table alias), and its fields as named parameters. */
const columnsSql = (fields: object, prefix = ""): string =>
  Object.keys(fields)
    .map((f) => `${prefix}${columnOf(f)}`)
    .join(", ");
const paramsSql = (fields: object): string =>
  Object.keys(fields)
    .map((f) => `@${f}`)
    .join(", ");

/** An agent row's columns but its output (the legacy stdout/stderr columns of agents stay empty). */
const AGENT_META = columnsSql(AGENT_META_FIELDS);
const PUT_AGENT = `INSERT OR REPLACE INTO agents (${AGENT_META}) VALUES (${paramsSql(AGENT_META_FIELDS)})`;
const GET_AGENT =
  `SELECT ${columnsSql(AGENT_META_FIELDS, "a.")}, o.stdout, o.stderr ` +
  "FROM agents a LEFT JOIN agent_output o ON o.id = a.id WHERE a.id = ?";
/** An agent's row without its output: agent.status and agent.kill answer no output, and it was 2 MiB read each. */
const GET_AGENT_META = `SELECT ${AGENT_META}, NULL AS stdout, NULL AS stderr FROM agents WHERE id = ?`;

/** An op row's columns but its result. */
const OP_META = columnsSql(OP_SUMMARY_FIELDS);
const INSERT_OP = `INSERT INTO ops (${OP_META}) VALUES (${paramsSql(OP_SUMMARY_FIELDS)})`;
const GET_OP = `SELECT ${columnsSql(OP_SUMMARY_FIELDS, "o.")}, x.result FROM ops o LEFT JOIN op_results x ON x.id = o.id WHERE o.id = ?`;
/** An op's row without its result: op.status and op.cancel answer none, and it was up to 2 MiB read each. */
const GET_OP_META = `SELECT ${OP_META}, NULL AS result FROM ops WHERE id = ?`;

/** Work the kernel runs for personas: agents, and deferred ops (compute.submit and friends). */
export function WorkRows<B extends StoreBase>(Base: B): WithRows<B, AgentStore & OpStore> {
  return class WorkRows extends Base implements AgentStore, OpStore {
    putAgent(r: AgentRecord): void {
      this.transaction(() => {
        this.prep(PUT_AGENT).run({ ...r, args: JSON.stringify(r.args) });
        // A new agent under a reused id starts with no output of its predecessor's.
        this.prep("DELETE FROM agent_output WHERE id = ?").run(r.id);
        if (r.stdout !== null || r.stderr !== null) putOutput(this, r.id, { stdout: r.stdout, stderr: r.stderr });
      });
    }
    getAgent(id: string, output = true): AgentRecord | undefined {
      const r = this.prep(output ? GET_AGENT : GET_AGENT_META).get(id) as Row | undefined;
      return r && toAgent(r);
    }
    agentOutputBytes(id: string): number {
      // A blob's length is in its record's header: its pages are not read.
      const r = this.prep(
        "SELECT coalesce(length(stdout), 0) + coalesce(length(stderr), 0) AS n FROM agent_output WHERE id = ?",
      ).get(id) as Row | undefined;
      return (r?.n as number | undefined) ?? 0;
    }
    listAgents(
      spawner?: string,
      after = 0,
      limit = -1,
      spawnerSpawn?: string | null,
      argsBudget = Number.POSITIVE_INFINITY,
    ): AgentSummary[] {
      const sql = `SELECT rowid AS seq, ${AGENT_META} FROM agents WHERE rowid > ?`;
      const [query, params] =
        spawner === undefined
          ? [`${sql} ORDER BY rowid LIMIT ?`, [after, limit]]
          : spawnerSpawn === undefined
            ? [`${sql} AND spawner = ? ORDER BY rowid LIMIT ?`, [after, spawner, limit]]
            : [`${sql} AND spawner = ? AND spawner_spawn IS ? ORDER BY rowid LIMIT ?`, [after, spawner, spawnerSpawn, limit]];
      // Row by row: a page of large arguments stops once it holds the budget, plus the next row
      // (so the caller knows more remain), never reading the rest of the page.
      const out: AgentSummary[] = [];
      let spent = 0;
      let full: number | undefined;
      for (const r of this.prep(query).iterate(...params) as IterableIterator<Row>) {
        // Bytes (UTF-8), as the bound and the answer count them: a string's length counts characters,
        // and a three-byte one counted 1 (a page held three times the bound).
        const argsBytes = Buffer.byteLength(r.args as string, "utf8");
        out.push({ ...toAgentMeta(r), seq: r.seq as number, argsBytes });
        if (full !== undefined) break;
        spent += argsBytes;
        if (spent >= argsBudget) full = out.length;
      }
      return out;
    }
    runningAgents(): RunningAgent[] {
      return (
        this.prep("SELECT id, persona, spawner, pid, token_id, proc_id FROM agents WHERE state = 'running'").all() as Row[]
      ).map((r) => ({
        id: r.id as string,
        persona: r.persona as string,
        spawner: r.spawner as string,
        pid: (r.pid as number | null) ?? null,
        tokenId: r.token_id as string,
        procId: (r.proc_id as string | null) ?? null,
      }));
    }
    updateAgent(id: string, f: Partial<AgentRecord>, endUnrecorded = false): void {
      this.transaction(() => {
        this.updateColumns("agents", AGENT_UPDATES, id, f);
        putOutput(this, id, f);
        if (endUnrecorded) this.prep("UPDATE agents SET end_unrecorded = 1 WHERE id = ?").run(id);
      });
    }
    unrecordedAgentEnds(): UnrecordedAgentEnd[] {
      return (
        this.prep(
          "SELECT id, persona, spawner, token_id, state, exit_code, signal FROM agents WHERE end_unrecorded IS NOT NULL AND state != 'running'",
        ).all() as Row[]
      ).map((r) => ({
        id: r.id as string,
        persona: r.persona as string,
        spawner: r.spawner as string,
        tokenId: r.token_id as string,
        state: r.state as AgentState,
        exitCode: (r.exit_code as number | null) ?? null,
        signal: (r.signal as string | null) ?? null,
      }));
    }
    agentEndRecorded(id: string): void {
      this.prep("UPDATE agents SET end_unrecorded = NULL WHERE id = ?").run(id);
    }
    pruneAgents(before: number, limit: number): number {
      return forget(
        this,
        AGENT_TABLES,
        this.prep("SELECT id FROM agents WHERE ended_at < ? AND state != 'running' LIMIT ?").all(before, limit) as Row[],
      );
    }
    trimEndedAgents(root: string, keep: number): number {
      return trimTree(this, AGENT_TABLES, "spawner", "ended_at IS NOT NULL AND state != 'running'", "ended_at", root, keep);
    }

    // deferred ops
    insertOp(r: OpRecord): void {
      this.transaction(() => {
        this.prep(INSERT_OP).run(r);
        if (r.result !== null) this.prep("INSERT OR REPLACE INTO op_results (id, result) VALUES (?, ?)").run(r.id, r.result);
      });
    }
    opResultBytes(id: string): number {
      // A blob's length is in its record's header: its pages are not read.
      const r = this.prep("SELECT coalesce(length(result), 0) AS n FROM op_results WHERE id = ?").get(id) as Row | undefined;
      return (r?.n as number | undefined) ?? 0;
    }
    getOp(id: string, result = true): OpRecord | undefined {
      const r = this.prep(result ? GET_OP : GET_OP_META).get(id) as Row | undefined;
      return r && toOp(r);
    }
    updateOp(id: string, f: Partial<OpRecord>, endUnrecorded = false): void {
      this.transaction(() => {
        this.updateColumns("ops", OP_UPDATES, id, f);
        if (endUnrecorded) this.prep("UPDATE ops SET end_unrecorded = 1 WHERE id = ?").run(id);
        if (f.result === undefined) return;
        if (f.result === null) this.prep("DELETE FROM op_results WHERE id = ?").run(id);
        else this.prep("INSERT OR REPLACE INTO op_results (id, result) VALUES (?, ?)").run(id, f.result);
      });
    }
    listOps(
      persona?: string,
      limit = 100,
      before = Number.MAX_SAFE_INTEGER,
      spawn?: string | null,
    ): (OpSummary & { seq: number })[] {
      // Newest first by insertion (rowid): a cursor is the last row's, and the next page lies below it.
      const sql = `SELECT rowid AS seq, ${OP_META} FROM ops WHERE rowid < ?`;
      const rows = (
        persona === undefined
          ? this.prep(`${sql} ORDER BY rowid DESC LIMIT ?`).all(before, limit)
          : spawn === undefined
            ? this.prep(`${sql} AND persona = ? ORDER BY rowid DESC LIMIT ?`).all(before, persona, limit)
            : this.prep(`${sql} AND persona = ? AND spawn IS ? ORDER BY rowid DESC LIMIT ?`).all(before, persona, spawn, limit)
      ) as Row[];
      return rows.map((r) => ({ ...toOpSummary(r), seq: r.seq as number }));
    }
    failInterruptedOps(message: string, now: number): { id: string; state: OpRecord["state"] }[] {
      const ids = (this.prep("SELECT id, state FROM ops WHERE state IN ('queued', 'running')").all() as Row[]).map((r) => ({
        id: r.id as string,
        state: r.state as OpRecord["state"],
      }));
      this.prep(
        "UPDATE ops SET state = 'failed', error_class = 'INTERNAL', message = ?, finished_at = ?, end_unrecorded = 1 WHERE state IN ('queued', 'running')",
      ).run(message, now);
      return ids;
    }
    setOpProcess(id: string, pid: number, procId: string | null): void {
      this.prep("UPDATE ops SET pid = ?, proc_id = ? WHERE id = ?").run(pid, procId, id);
    }
    interruptedOpProcesses(): { id: string; pid: number; procId: string | null }[] {
      return (
        this.prep("SELECT id, pid, proc_id FROM ops WHERE state IN ('queued', 'running') AND pid IS NOT NULL").all() as Row[]
      ).map((r) => ({ id: r.id as string, pid: r.pid as number, procId: (r.proc_id as string | null) ?? null }));
    }
    unrecordedOpEnds(): string[] {
      return this.prep("SELECT id FROM ops WHERE end_unrecorded IS NOT NULL AND state NOT IN ('queued', 'running')")
        .pluck(true)
        .all() as string[];
    }
    opEndRecorded(id: string): void {
      this.prep("UPDATE ops SET end_unrecorded = NULL WHERE id = ?").run(id);
    }
    trimFinishedOps(root: string, keep: number, unreadSince: number): number {
      // Unread results within their grace first (a poller is still to read them), then the newest.
      return trimTree(this, OP_TABLES, "persona", FINISHED, "finished_at", root, keep, {
        order: "(claimed_at IS NULL AND finished_at >= ?) DESC",
        arg: unreadSince,
      });
    }
    claimOp(id: string, at: number): void {
      this.prep("UPDATE ops SET claimed_at = ? WHERE id = ? AND claimed_at IS NULL").run(at, id);
    }
    countUnreadOps(root: string, since: number): number {
      const sql = `SELECT count(*) AS n FROM ops WHERE ${inTreeSql("persona")} AND ${FINISHED} AND claimed_at IS NULL AND finished_at >= ?`;
      return (this.prep(sql).get(...treeArgs(root), since) as Row).n as number;
    }
    disownWork(tree: string, alone = false): void {
      const args = alone ? idArgs(tree) : treeArgs(tree);
      this.transaction(() => {
        this.prep(`UPDATE ops SET spawn = ? WHERE ${inTreeSql("persona")} AND spawn IS NULL`).run(REMOVED_SPAWN, ...args);
        this.prep(`UPDATE agents SET spawner_spawn = ? WHERE ${inTreeSql("spawner")} AND spawner_spawn IS NULL`).run(
          REMOVED_SPAWN,
          ...args,
        );
      });
    }
    pruneOps(now: number, limit = -1): number {
      return forget(
        this,
        OP_TABLES,
        this.prep(`SELECT id FROM ops WHERE expires_at < ? AND ${FINISHED} LIMIT ?`).all(now, limit) as Row[],
      );
    }
  };
}

/** An op row that has finished (its outcome recorded). */
const FINISHED = "state NOT IN ('queued', 'running')";

/** An agent's tables and an op's: the bulky part's table first (its output, its result), then the row's. */
const AGENT_TABLES = ["agent_output", "agents"] as const;
const OP_TABLES = ["op_results", "ops"] as const;

/** Deletes the records `rows` names (their ids) from each of `tables`, in one transaction; returns how many. */
function forget(store: Pick<StoreBase["prototype"], "prep" | "transaction">, tables: readonly string[], rows: Row[]): number {
  return store.transaction(() => {
    for (const { id } of rows) for (const t of tables) store.prep(`DELETE FROM ${t} WHERE id = ?`).run(id);
    return rows.length;
  });
}

/**
 * Forgets all but the newest `keep` finished records (`finished`, newest by `newest`) whose
 * `column` names `root` or a persona under it ({@link inTreeSql}: an index on `column` finds them, no scan).
 * `first`: an order term (with its one parameter) kept before the newest, e.g. results not yet read.
 */
function trimTree(
  store: Pick<StoreBase["prototype"], "prep" | "transaction">,
  tables: readonly [string, string],
  column: string,
  finished: string,
  newest: string,
  root: string,
  keep: number,
  first?: { order: string; arg: unknown },
): number {
  const sql =
    `SELECT id FROM ${tables[1]} WHERE ${inTreeSql(column)} AND ${finished} ` +
    `ORDER BY ${first ? `${first.order}, ` : ""}${newest} DESC, rowid DESC LIMIT -1 OFFSET ?`;
  const args = first ? [...treeArgs(root), first.arg, keep] : [...treeArgs(root), keep];
  return forget(store, tables, store.prep(sql).all(...args) as Row[]);
}

/** Sets the output streams `f` gives (stdout, stderr) of agent `id` (a row is made if it has none); none: nothing runs. */
function putOutput(store: Pick<StoreBase["prototype"], "prep">, id: string, f: Partial<AgentRecord>): void {
  const { fields, values } = pickColumns(OUTPUT_UPDATES, f);
  if (!fields.length) return;
  const cols = fields.map((k) => OUTPUT_UPDATES[k] as string);
  store
    .prep(
      `INSERT INTO agent_output (id, ${cols.join(", ")}) VALUES (@id, ${fields.map((k) => `@${k}`).join(", ")}) ` +
        `ON CONFLICT (id) DO UPDATE SET ${cols.map((c) => `${c} = excluded.${c}`).join(", ")}`,
    )
    .run({ id, ...values });
}

const agentRow = rowReader<AgentRecord>({ ...AGENT_META_FIELDS, stdout: true, stderr: true });
const agentMetaRow = rowReader<AgentMeta>(AGENT_META_FIELDS);
/** The row's args column parsed. */
const withArgs = <T extends { args: string[] }>(a: T): T => ({ ...a, args: JSON.parse(a.args as unknown as string) as string[] });
const toAgent = (r: Row): AgentRecord => withArgs(agentRow(r));
const toAgentMeta = (r: Row): AgentMeta => withArgs(agentMetaRow(r));

const toOp = rowReader<OpRecord>({ ...OP_SUMMARY_FIELDS, result: true });
const toOpSummary = rowReader<OpSummary>(OP_SUMMARY_FIELDS);
