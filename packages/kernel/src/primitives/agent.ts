import type { CborMap, CborValue, Right } from "@kpip/protocol";
import type { AgentManager } from "../agents/manager.js";
import type { AgentRecord } from "../store/types.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

function agentId(ctx: OpContext): string {
  const segs = ctx.target.segments;
  if (segs.length !== 2 || segs.some((s) => s === "*" || s === "**")) {
    throw new OpError("SEMANTIC", `${ctx.op} takes agent://<executable>/<instance>`);
  }
  return segs.join("/");
}

function describe(a: AgentRecord, withOutput = false): CborMap {
  const p: CborMap = {
    agent: `agent://${a.id}`,
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
  const visible = (ctx: OpContext): AgentRecord => {
    const id = agentId(ctx);
    const a = agents.get(id);
    if (!a || (a.spawner !== ctx.persona && ctx.persona !== admin)) throw new OpError("SEMANTIC", `no agent ${ctx.targetUri}`);
    return a;
  };
  return {
    name: "agent",
    ops: [
      {
        op: "agent.spawn",
        description:
          "Start agent://<executable>/<instance>: a process (no shell) acting as persona <spawner>/<instance> with a token of the requested rights (within the spawner's).",
        targets: ["agent"],
        args: {
          args: { type: "array", description: "arguments (text)" },
          rights: { type: "array", required: true, description: "[{ops, targets}] for the agent's token" },
          lifetimeMs: { type: "uint", required: true, description: "the agent is killed after this long" },
          limits: { type: "map", description: "limits for the agent's token (default: the spawner's)" },
        },
        idempotent: false,
        effects: true,
        handler: (ctx): OpResult => {
          const [executable, instance] = agentId(ctx).split("/") as [string, string];
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
          });
          return { status: "SUCCESS", payload: describe(a) };
        },
      },
      {
        op: "agent.kill",
        description: "Kill a running agent (its whole process group).",
        targets: ["agent"],
        args: {},
        idempotent: true,
        effects: true,
        handler: (ctx) => {
          const a = visible(ctx);
          return { status: "SUCCESS", payload: { agent: `agent://${a.id}`, killed: agents.kill(a.id) } };
        },
      },
      {
        op: "agent.status",
        description: "An agent's state, pid, exit code and signal.",
        targets: ["agent"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx) => ({ status: "SUCCESS", payload: describe(visible(ctx)) }),
      },
      {
        op: "agent.logs",
        description: "An agent's captured stdout and stderr (bounded).",
        targets: ["agent"],
        args: {},
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
