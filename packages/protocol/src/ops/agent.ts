import { defineOp, type FieldSpec } from "./define.js";
import { limitsField, rightsField } from "./token.js";

/* agent.* — processes the kernel starts; each connects back as its own persona. */

const uint = (description: string) => ({ type: "uint", description }) as const;
const text = (description: string) => ({ type: "text", required: true, description }) as const;

/** An agent as agent.spawn, agent.status and agent.list describe it. */
const agentRecord = {
  agent: text("agent://<executable>/<instance>"),
  persona: text("the persona it acts as"),
  spawner: text("the persona that spawned it"),
  command: text("the executable"),
  args: { type: "array", required: true, items: { type: "text", description: "an argument" }, description: "its arguments" },
  state: text("running, exited, killed or lost"),
  startedAt: { ...uint("when it started, ms since the epoch"), required: true },
  deadline: { ...uint("when it is killed"), required: true },
  token: text("the id of its token"),
  exitCode: uint("its exit code, once exited (in the sandbox, a program that died of signal n exits 128 + n: §9.4)"),
  signal: { type: "text", description: "the signal that ended it: SIGKILL when the kernel killed it (§9.4)" },
  endedAt: uint("when it ended"),
  spawnerSpawn: {
    type: "text",
    description:
      "when its spawner is an agent: that agent's token id, the spawn of the spawner's name that spawned it (a later agent of that name does not see it, §9.4); `removed` when its spawner was since removed from the registry (a persona registered again under that id does not see it, §8.4)",
  },
} as const;

const spawner = { type: "text", description: "the admin only: another persona's agent" } as const satisfies FieldSpec;

export const agentSpawn = defineOp({
  op: "agent.spawn",
  description:
    "Start agent://<executable>/<instance> (an id of the spawner's own): a process (no shell) in the process sandbox, acting as persona <spawner>/agent.<instance> with a token of the requested rights (within the spawner's).",
  targets: ["agent"],
  args: {
    args: { type: "array", items: { type: "text", description: "an argument" }, description: "arguments (text)" },
    rights: { ...rightsField, description: "[{ops, targets}] for the agent's token" },
    lifetimeMs: { type: "uint", required: true, description: "the agent is killed after this long" },
    limits: { ...limitsField, description: "limits for the agent's token (default: the spawner's)" },
    network: { type: "bool", description: "let the agent reach the network (needs sandbox.network on the target)" },
  },
  result: agentRecord,
  idempotent: false,
  effects: true,
});

export const agentKill = defineOp({
  op: "agent.kill",
  description:
    "Kill a running agent (its whole process group). Its authority ends when the kill is answered: its token is revoked and its key no longer attests nor acts, before its process has closed (§9.4, Agents).",
  targets: ["agent"],
  args: { spawner },
  result: {
    agent: text("agent://<executable>/<instance>"),
    killed: {
      type: "bool",
      required: true,
      description:
        "whether this call killed it: false when it had ended or was already being killed (an earlier agent.kill, a revocation, its lifetime)",
    },
  },
  idempotent: true,
  effects: true,
});

export const agentStatus = defineOp({
  op: "agent.status",
  description: "An agent's state, exit code and signal (never its host process id: the audit record has it).",
  targets: ["agent"],
  args: { spawner },
  result: agentRecord,
  idempotent: true,
  effects: false,
});

export const agentLogs = defineOp({
  op: "agent.logs",
  description: "An agent's captured stdout and stderr (bounded).",
  targets: ["agent"],
  args: { spawner },
  result: {
    ...agentRecord,
    stdout: {
      type: "bytes",
      required: true,
      description: "captured standard output (its first maxOutputBytes bytes; the rest is discarded)",
    },
    stderr: {
      type: "bytes",
      required: true,
      description: "captured standard error (its first maxOutputBytes bytes; the rest is discarded)",
    },
  },
  idempotent: true,
  effects: false,
});

export const agentList = defineOp({
  op: "agent.list",
  description:
    "The agents this persona spawned (all, for the admin), oldest first, without their output (agent.logs reads one agent's); PARTIAL with a cursor when more remain. Ended agents are kept for the kernel's agent retention, then forgotten.",
  targets: ["kernel"],
  args: {
    cursor: { type: "text", description: "the cursor of the previous page" },
    limit: { type: "uint", description: "agents per page (default 100, at most 1000)" },
  },
  result: {
    agents: {
      type: "array",
      required: true,
      description: "agents, oldest first",
      items: { type: "map", description: "an agent", fields: agentRecord },
    },
    cursor: { type: "text", description: "PARTIAL: pass it to get the next page" },
  },
  answers: { PARTIAL: "more agents remain: the payload's `cursor` asks for the next page" },
  idempotent: true,
  effects: false,
});

export const agentOps = [agentSpawn, agentKill, agentStatus, agentLogs, agentList] as const;
