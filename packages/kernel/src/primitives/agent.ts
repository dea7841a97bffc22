import type { CborMap } from "@kpip/protocol";
import { agentKill, agentList, agentLogs, agentSpawn, agentStatus } from "@kpip/protocol";
import type { AgentManager } from "../agents/manager.js";
import { agentKey, agentUri } from "../agents/namespace.js";
import { AGENT_LIST_ARGS_BYTES } from "../limits.js";
import type { AgentRecord, AgentSummary } from "../store/types.js";
import { networkGranted, networkRight } from "./compute.js";
import { implement } from "./implement.js";
import { pageAnswer, pageRequest } from "./paging.js";
import { PROCESS_CURSORS, type SeqCursors } from "./seq-cursor.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

function agentId(ctx: OpContext): [string, string] {
  const segs = ctx.target.segments;
  if (segs.length !== 2 || segs.some((s) => s === "*" || s === "**")) {
    throw new OpError("SEMANTIC", `${ctx.op} takes agent://<executable>/<instance>`);
  }
  return segs as [string, string];
}

/**
 * An agent as a persona sees it: never its host pid nor its scratch directory's host path (the
 * host's layout is no persona's business; the audit record keeps the pid for the operator).
 */
function describe(a: Omit<AgentRecord, "stdout" | "stderr"> & Partial<AgentRecord>, withOutput = false): CborMap {
  const p: CborMap = {
    agent: agentUri(a.id),
    persona: a.persona,
    spawner: a.spawner,
    command: a.command,
    args: a.args,
    state: a.state,
    startedAt: a.startedAt,
    deadline: a.deadline,
    token: a.tokenId,
  };
  if (a.exitCode !== null) p.exitCode = a.exitCode;
  if (a.signal !== null) p.signal = a.signal;
  if (a.endedAt !== null) p.endedAt = a.endedAt;
  if (a.spawnerSpawn !== null) p.spawnerSpawn = a.spawnerSpawn;
  if (withOutput) {
    p.stdout = a.stdout ?? new Uint8Array();
    p.stderr = a.stderr ?? new Uint8Array();
  }
  return p;
}

/** agent.spawn / kill / status / logs / list. A persona sees the agents it spawned; the admin sees all. */
export function agentFamily(agents: AgentManager, admin: string, cursors: SeqCursors = PROCESS_CURSORS): PrimitiveFamily {
  // Agent ids are scoped to their spawner: agent://x/y is the caller's own; the admin names another spawner's with args.spawner.
  // An agent spawner's are its own spawn's: a later agent of its name does not see an earlier one's.
  // Without its output: only agent.logs answers it, and reads it once it has held its size.
  const visible = (ctx: OpContext): AgentRecord => {
    const [executable, instance] = agentId(ctx);
    const spawner = ctx.args.spawner === undefined ? ctx.persona : String(ctx.args.spawner);
    const a =
      spawner === ctx.persona || ctx.persona === admin ? agents.get(agentKey(spawner, executable, instance), false) : undefined;
    if (!a || (ctx.persona !== admin && a.spawnerSpawn !== agents.spawnOf(ctx.persona)))
      throw new OpError("SEMANTIC", `no agent ${ctx.targetUri}`);
    return a;
  };
  return {
    name: "agent",
    ops: [
      implement(agentSpawn, {
        owns: (ctx) => (agents.registered(ctx.persona) ? networkRight(ctx) : `persona ${ctx.persona} is no longer registered`),
        handler: (ctx): OpResult => {
          const [executable, instance] = agentId(ctx);
          const network = networkGranted(ctx);
          const args = ctx.args.args ?? [];
          if (!args.every((a) => typeof a === "string")) throw new OpError("SEMANTIC", "args must be text strings");
          const rights = ctx.args.rights;
          if (!rights.every((r) => r && Array.isArray(r.ops) && Array.isArray(r.targets)))
            throw new OpError("SEMANTIC", "rights must be [{ops, targets}]");
          const a = agents.spawn({
            spawner: ctx.persona,
            grant: ctx.grant,
            executable,
            instance,
            args,
            rights,
            lifetimeMs: ctx.args.lifetimeMs,
            ...(ctx.args.limits ? { limits: ctx.args.limits } : {}),
            network,
          });
          return {
            status: "SUCCESS",
            payload: describe(a),
            audit: { agent: a.id, persona: a.persona, token: a.tokenId, ...(a.pid !== null ? { pid: a.pid } : {}) },
          };
        },
      }),
      implement(agentKill, {
        // A look at or a stop of its own work: admitted past `concurrent` within an allowance (ResourceLedger.admit).
        control: true,
        handler: (ctx): OpResult => {
          const a = visible(ctx);
          const killed = agents.kill(a.id);
          // The record names which agent: agent://<exe>/<instance> is every spawner's own name, and
          // the admin's `spawner` lies in the intent's bytes only (none past auditIntentMaxBytes).
          return {
            status: "SUCCESS",
            payload: { agent: agentUri(a.id), killed },
            audit: { agent: a.id, persona: a.persona, token: a.tokenId, killed },
          };
        },
      }),
      implement(agentStatus, {
        control: true,
        handler: (ctx) => ({ status: "SUCCESS", payload: describe(visible(ctx)) }),
      }),
      implement(agentLogs, {
        handler: (ctx) => {
          const a = visible(ctx);
          // The output is counted before it is read: a burst of agent.logs cannot pile it up.
          ctx.holdAnswerBytes(agents.outputBytes(a.id));
          return { status: "SUCCESS", payload: describe(agents.get(a.id) ?? a, true) };
        },
      }),
      implement(agentList, {
        control: true,
        handler: (ctx): OpResult => {
          const page = pageRequest(ctx.args, "an agent list", cursors);
          // Metadata only, a page at a time: an agent's output is read by agent.logs, one agent at a time.
          // An agent persona's page: its own spawn's agents (none when no agent runs as it).
          const spawn = ctx.persona === admin ? undefined : agents.spawnOf(ctx.persona);
          const rows =
            ctx.persona !== admin && spawn === undefined
              ? []
              : agents.list(
                  ctx.persona === admin ? undefined : ctx.persona,
                  page.after,
                  page.limit + 1,
                  spawn,
                  AGENT_LIST_ARGS_BYTES,
                );
          // The page ends with the row that reaches the bound of arguments read: each agent's may
          // be MAX_ARGV_BYTES, and a thousand of them were seconds of the kernel's thread to read.
          let limit = page.limit;
          let spent = 0;
          for (let i = 0; i < rows.length && i < limit; i++) {
            spent += (rows[i] as AgentSummary).argsBytes;
            if (spent >= AGENT_LIST_ARGS_BYTES) limit = i + 1;
          }
          return pageAnswer(
            rows,
            { ...page, limit },
            "agents",
            (a) => describe(a),
            (a) => page.seal(a.seq),
          );
        },
      }),
    ],
  };
}
