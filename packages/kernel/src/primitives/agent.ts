import type { CborMap, CborValue, Right } from "@kpip/protocol";
import type { AgentManager } from "../agents/manager.js";
import { agentKey, agentUri } from "../agents/namespace.js";
import type { AgentRecord } from "../store/types.js";
import { networkGranted, networkRight } from "./compute.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

function agentId(ctx: OpContext): [string, string] {
  const segs = ctx.target.segments;
  if (segs.length !== 2 || segs.some((s) => s === "*" || s === "**")) {
    throw new OpError("SEMANTIC", `${ctx.op} takes agent://<executable>/<instance>`);
  }
  return segs as [string, string];
}

function describe(a: AgentRecord, withOutput = false): CborMap {
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
  if (a.pid !== null) p.pid = a.pid;
  if (a.exitCode !== null) p.exitCode = a.exitCode;
  if (a.signal !== null) p.signal = a.signal;
  if (a.endedAt !== null) p.endedAt = a.endedAt;
  if (withOutput) {
    p.stdout = a.stdout ?? new Uint8Array();
    p.stderr = a.stderr ?? new Uint8Array();
  }
  return p;
}

/** agent.spawn / kill / status / logs / list. A persona sees the agents it spawned; the admin sees all. */
export function agentFamily(agents: AgentManager, admin: string): PrimitiveFamily {
  // Agent ids are scoped to their spawner: agent://x/y is the caller's own; the admin names another spawner's with args.spawner.
  const visible = (ctx: OpContext): AgentRecord => {
    const [executable, instance] = agentId(ctx);
    const spawner = ctx.args.spawner === undefined ? ctx.persona : String(ctx.args.spawner);
    const a = spawner === ctx.persona || ctx.persona === admin ? agents.get(agentKey(spawner, executable, instance)) : undefined;
    if (!a) throw new OpError("SEMANTIC", `no agent ${ctx.targetUri}`);
    return a;
  };
  const spawnerArg = { type: "text", description: "the admin only: another persona's agent" } as const;
  return {
    name: "agent",
    ops: [
      {
        op: "agent.spawn",
        description:
          "Start agent://<executable>/<instance> (an id of the spawner's own): a process (no shell) in the process sandbox, acting as persona <spawner>/agent.<instance> with a token of the requested rights (within the spawner's).",
        targets: ["agent"],
        args: {
          args: { type: "array", description: "arguments (text)" },
          rights: { type: "array", required: true, description: "[{ops, targets}] for the agent's token" },
          lifetimeMs: { type: "uint", required: true, description: "the agent is killed after this long" },
          limits: { type: "map", description: "limits for the agent's token (default: the spawner's)" },
          network: { type: "bool", description: "let the agent reach the network (needs sandbox.network on the target)" },
        },
        idempotent: false,
        effects: true,
        owns: (ctx) => (agents.registered(ctx.persona) ? networkRight(ctx) : `persona ${ctx.persona} is no longer registered`),
        handler: (ctx): OpResult => {
          const [executable, instance] = agentId(ctx);
          const network = networkGranted(ctx);
          const args = (ctx.args.args ?? []) as CborValue[];
          if (!args.every((a) => typeof a === "string")) throw new OpError("SEMANTIC", "args must be text strings");
          const rights = ctx.args.rights as unknown as Right[];
          if (!rights.every((r) => r && Array.isArray(r.ops) && Array.isArray(r.targets)))
            throw new OpError("SEMANTIC", "rights must be [{ops, targets}]");
          const a = agents.spawn({
            spawner: ctx.persona,
            grant: ctx.grant,
            executable,
            instance,
            args: args as string[],
            rights,
            lifetimeMs: ctx.args.lifetimeMs as number,
            ...(ctx.args.limits ? { limits: ctx.args.limits as Record<string, number> } : {}),
            network,
          });
          return {
            status: "SUCCESS",
            payload: describe(a),
            audit: { agent: a.id, persona: a.persona, token: a.tokenId, ...(a.pid !== null ? { pid: a.pid } : {}) },
          };
        },
      },
      {
        op: "agent.kill",
        description: "Kill a running agent (its whole process group).",
        targets: ["agent"],
        args: { spawner: spawnerArg },
        idempotent: true,
        effects: true,
        handler: (ctx) => {
          const a = visible(ctx);
          return { status: "SUCCESS", payload: { agent: agentUri(a.id), killed: agents.kill(a.id) } };
        },
      },
      {
        op: "agent.status",
        description: "An agent's state, pid, exit code and signal.",
        targets: ["agent"],
        args: { spawner: spawnerArg },
        idempotent: true,
        effects: false,
        handler: (ctx) => ({ status: "SUCCESS", payload: describe(visible(ctx)) }),
      },
      {
        op: "agent.logs",
        description: "An agent's captured stdout and stderr (bounded).",
        targets: ["agent"],
        args: { spawner: spawnerArg },
        idempotent: true,
        effects: false,
        handler: (ctx) => ({ status: "SUCCESS", payload: describe(visible(ctx), true) }),
      },
      {
        op: "agent.list",
        description: "The agents this persona spawned (all, for the admin).",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx) => ({
          status: "SUCCESS",
          payload: { agents: agents.list(ctx.persona === admin ? undefined : ctx.persona).map((a) => describe(a)) },
        }),
      },
    ],
  };
}
