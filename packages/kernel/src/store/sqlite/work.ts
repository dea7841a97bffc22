import type { AgentRecord, AgentStore, OpRecord, OpStore } from "../types.js";
import { type Row, rowReader, type StoreBase, type WithRows } from "./base.js";

/** The fields of an agent record an update may set, and their columns. */
const AGENT_UPDATES: Readonly<Record<string, string>> = {
  pid: "pid",
  state: "state",
  exitCode: "exit_code",
  signal: "signal",
  endedAt: "ended_at",
  stdout: "stdout",
  stderr: "stderr",
};

/** The fields of an op record an update may set, and their columns. */
const OP_UPDATES: Readonly<Record<string, string>> = {
  state: "state",
  result: "result",
  errorClass: "error_class",
  message: "message",
  startedAt: "started_at",
  finishedAt: "finished_at",
  expiresAt: "expires_at",
};

/** Work the kernel runs for personas: agents, and deferred ops (compute.submit and friends). */
export function WorkRows<B extends StoreBase>(Base: B): WithRows<B, AgentStore & OpStore> {
  return class WorkRows extends Base implements AgentStore, OpStore {
    putAgent(r: AgentRecord): void {
      this.prep(
        "INSERT OR REPLACE INTO agents (id, persona, spawner, command, args, pid, state, exit_code, signal, started_at, ended_at, deadline, stdout, stderr, token_id, cwd) " +
          "VALUES (@id, @persona, @spawner, @command, @args, @pid, @state, @exitCode, @signal, @startedAt, @endedAt, @deadline, @stdout, @stderr, @tokenId, @cwd)",
      ).run({ ...r, args: JSON.stringify(r.args) });
    }
    getAgent(id: string): AgentRecord | undefined {
      const r = this.prep("SELECT * FROM agents WHERE id = ?").get(id) as Row | undefined;
      return r && toAgent(r);
    }
    listAgents(spawner?: string): AgentRecord[] {
      const rows = (
        spawner === undefined
          ? this.prep("SELECT * FROM agents ORDER BY started_at").all()
          : this.prep("SELECT * FROM agents WHERE spawner = ? ORDER BY started_at").all(spawner)
      ) as Row[];
      return rows.map(toAgent);
    }
    updateAgent(id: string, f: Partial<AgentRecord>): void {
      this.updateColumns("agents", AGENT_UPDATES, id, f);
    }

    // deferred ops
    insertOp(r: OpRecord): void {
      this.prep(
        "INSERT INTO ops (id, persona, session, kind, name, state, result, error_class, message, created_at, started_at, finished_at, deadline, expires_at) " +
          "VALUES (@id, @persona, @session, @kind, @name, @state, @result, @errorClass, @message, @createdAt, @startedAt, @finishedAt, @deadline, @expiresAt)",
      ).run(r);
    }
    getOp(id: string): OpRecord | undefined {
      const r = this.prep("SELECT * FROM ops WHERE id = ?").get(id) as Row | undefined;
      return r && toOp(r);
    }
    updateOp(id: string, f: Partial<OpRecord>): void {
      this.updateColumns("ops", OP_UPDATES, id, f);
    }
    listOps(persona?: string, limit = 100): OpRecord[] {
      const rows = (
        persona === undefined
          ? this.prep("SELECT * FROM ops ORDER BY created_at DESC LIMIT ?").all(limit)
          : this.prep("SELECT * FROM ops WHERE persona = ? ORDER BY created_at DESC LIMIT ?").all(persona, limit)
      ) as Row[];
      return rows.map(toOp);
    }
    failInterruptedOps(message: string, now: number): { id: string; state: OpRecord["state"] }[] {
      const ids = (this.prep("SELECT id, state FROM ops WHERE state IN ('queued', 'running')").all() as Row[]).map((r) => ({
        id: r.id as string,
        state: r.state as OpRecord["state"],
      }));
      this.prep(
        "UPDATE ops SET state = 'failed', error_class = 'INTERNAL', message = ?, finished_at = ? WHERE state IN ('queued', 'running')",
      ).run(message, now);
      return ids;
    }
    pruneOps(now: number): number {
      return this.prep("DELETE FROM ops WHERE expires_at < ? AND state NOT IN ('queued', 'running')").run(now).changes;
    }
  };
}

const agentRow = rowReader<AgentRecord>({
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
  stdout: true,
  stderr: true,
  tokenId: true,
  cwd: true,
});
const toAgent = (r: Row): AgentRecord => {
  const a = agentRow(r);
  return { ...a, args: JSON.parse(a.args as unknown as string) as string[] };
};

const toOp = rowReader<OpRecord>({
  id: true,
  persona: true,
  session: true,
  kind: true,
  name: true,
  state: true,
  result: true,
  errorClass: true,
  message: true,
  createdAt: true,
  startedAt: true,
  finishedAt: true,
  deadline: true,
  expiresAt: true,
});
