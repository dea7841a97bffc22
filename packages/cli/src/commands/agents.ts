import { opResult } from "@kpip/protocol";
import { printable, terminalText } from "../audit/printable.js";
import type { Command, Values } from "../command.js";
import { CONNECT_OPTIONS, withClient } from "../connect.js";
import { subcommandError } from "../suggest.js";
import { EXIT, printTable, render, toJson, UsageError } from "../util.js";
import { parseAllow, parseDuration } from "./grant-args.js";

const print = (v: Values, payload: unknown): void => {
  process.stdout.write(v.json ? `${JSON.stringify(toJson(payload))}\n` : `${render(payload)}\n`);
};

function agentUri(s: string | undefined): string {
  if (!s) throw new UsageError("name the agent: agent://<executable>/<instance> or <executable>/<instance>");
  return s.startsWith("agent://") ? s : `agent://${s}`;
}

export const agentsCommand: Command = {
  name: "agents",
  summary: "spawn, list, kill agents and read their logs",
  usage:
    "kpip agents list | spawn <executable>/<instance> --allow OPS:TARGETS --lifetime D [-- args…] | kill <agent> | status <agent> | logs <agent> [--spawner P]",
  example: "kpip agents spawn node/worker-1 --allow 'storage.*:obj://ws1/**' --lifetime 10m -- /srv/agents/agent.js",
  options: {
    ...CONNECT_OPTIONS,
    allow: { type: "string", multiple: true, description: "spawn: OPS:TARGETS for the agent's token; repeatable" },
    lifetime: { type: "string", description: "spawn: the agent is killed after this long (30s, 10m, 1h)" },
    spawner: {
      type: "string",
      description:
        "kill, status, logs: the agent of this spawner (the admin only; default: your own — every spawner has its own agent names)",
    },
    json: { type: "boolean", description: "print JSON" },
    raw: {
      type: "boolean",
      description: "logs: the agent's bytes as written, stdout then stderr (default: control characters shown as \\u{…})",
    },
  },
  async run(v, pos) {
    const [sub, target, ...rest] = pos;
    // agent://<executable>/<instance> is a name of its spawner's own: another spawner's agent of
    // the same name is another agent, which the admin names with --spawner.
    const spawner = v.spawner as string | undefined;
    if (spawner !== undefined && !["kill", "status", "logs"].includes(String(sub)))
      throw new UsageError("--spawner names the agent of kill, status or logs");
    const whose = spawner === undefined ? {} : { spawner };
    switch (sub) {
      case "list":
        return withClient(v, async (c) => {
          const agents = await c.agents.list();
          if (v.json) process.stdout.write(`${JSON.stringify(toJson(agents))}\n`);
          else
            printTable(
              ["AGENT", "SPAWNER", "STATE", "PERSONA"],
              agents.map((a) => [String(a.agent), String(a.spawner), String(a.state), String(a.persona)]),
            );
        });
      case "spawn": {
        if (!target || !/^[^/]+\/[^/]+$/.test(target.replace(/^agent:\/\//, "")))
          throw new UsageError("spawn needs <executable>/<instance>");
        if (v.lifetime === undefined) throw new UsageError("spawn needs --lifetime");
        const rights = ((v.allow as string[] | undefined) ?? []).map(parseAllow);
        const [executable, instance] = target.replace(/^agent:\/\//, "").split("/") as [string, string];
        const lifetimeMs = parseDuration(v.lifetime as string, "--lifetime");
        return withClient(v, async (c) =>
          print(v, await c.agents.spawn(executable, instance, { args: rest, rights, lifetimeMs })),
        );
      }
      case "kill": {
        let code: number = EXIT.OK;
        const done = await withClient(v, async (c) => {
          const uri = agentUri(target);
          // Whose agent it was, said with the outcome: the caller's own unless --spawner named another's.
          const of = spawner === undefined ? "" : ` of ${printable(spawner)}`;
          const killed = await c.agents.kill(uri, whose);
          if (v.json) process.stdout.write(`${JSON.stringify({ agent: uri, ...whose, killed })}\n`);
          else if (killed) process.stdout.write(`killed ${printable(uri)}${of}\n`);
          if (!killed) {
            if (!v.json) process.stderr.write(`kpip agents: ${printable(uri)}${of} was not running: nothing was killed\n`);
            code = EXIT.FAILED;
          }
        });
        return done === EXIT.OK ? code : done;
      }
      case "status":
        return withClient(v, async (c) => print(v, await c.agents.status(agentUri(target), whose)));
      case "logs":
        return withClient(v, async (c) => {
          const l = await c.agents.logs(agentUri(target), whose);
          if (v.json) process.stdout.write(`${JSON.stringify(toJson(l))}\n`);
          else if (v.raw) {
            process.stdout.write(l.stdout);
            if (l.stderr.length) process.stdout.write(l.stderr);
          } else
            process.stdout.write(
              `${terminalText(l.stdout)}${l.stderr.length ? `--- stderr ---\n${terminalText(l.stderr)}` : ""}`,
            );
        });
      default:
        throw subcommandError("agents", sub, ["list", "spawn", "kill", "status", "logs"]);
    }
  },
};

export const opsCommand: Command = {
  name: "ops",
  summary: "list DEFERRED ops, show their status, cancel them",
  usage: "kpip ops list | status <op://id> | result <op://id> | cancel <op://id>",
  example: "kpip ops status op://3f2a…",
  options: { ...CONNECT_OPTIONS, json: { type: "boolean", description: "print JSON" } },
  async run(v, pos) {
    const [sub, target] = pos;
    const op = () => {
      if (!target) throw new UsageError(`${sub} needs an op (op://<id>)`);
      return target.startsWith("op://") ? target : `op://${target}`;
    };
    switch (sub) {
      case "list":
        return withClient(v, async (c) => {
          // Paged: the kernel answers PARTIAL pages; the client follows them.
          const ops = await c.ops.list();
          if (v.json) process.stdout.write(`${JSON.stringify(toJson(ops))}\n`);
          else
            printTable(
              ["OP", "STATE", "KIND", "NAME"],
              ops.map((o) => [String(o.op), String(o.state), String(o.kind), String(o.name)]),
            );
        });
      case "status":
        return withClient(v, async (c) => print(v, await c.ops.status(op())));
      case "result": {
        let code: number = EXIT.OK;
        const done = await withClient(v, async (c) => {
          const r = await c.op(opResult, op(), {});
          print(v, r.payload);
          if (r.status === "DEFERRED") {
            if (!v.json) process.stderr.write(`kpip ops: ${op()} is still running: no result yet (kpip ops status ${op()})\n`);
            code = EXIT.FAILED;
          }
        });
        return done === EXIT.OK ? code : done;
      }
      case "cancel": {
        let code: number = EXIT.OK;
        const done = await withClient(v, async (c) => {
          const cancelled = await c.ops.cancel(op());
          print(v, { cancelled });
          if (!cancelled) {
            if (!v.json) process.stderr.write(`kpip ops: ${op()} had already finished: nothing to cancel\n`);
            code = EXIT.FAILED;
          }
        });
        return done === EXIT.OK ? code : done;
      }
      default:
        throw subcommandError("ops", sub, ["list", "status", "result", "cancel"]);
    }
  },
};

export const eventsCommand: Command = {
  name: "events",
  summary: "follow events on topics matching a pattern",
  usage: "kpip events tail <topic-pattern> [--json]",
  example: "kpip events tail 'topic://kernel/**'",
  options: { ...CONNECT_OPTIONS, json: { type: "boolean", description: "one JSON object per event" } },
  async run(v, pos) {
    const [sub, pattern] = pos;
    if (sub !== "tail") throw subcommandError("events", sub, ["tail"]);
    if (!pattern) throw new UsageError("events tail needs a topic pattern, e.g. topic://kernel/**");
    return withClient(v, async (c) => {
      const sub = await c.events.subscribe(pattern.startsWith("topic://") ? pattern : `topic://${pattern}`);
      const stop = () => void sub.unsubscribe();
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      for await (const e of sub) {
        // the time it arrived, in UTC: events carry no kernel timestamp of their own
        const time = new Date().toISOString();
        if (v.json) process.stdout.write(`${JSON.stringify({ time, ...(toJson(e) as object) })}\n`);
        // The data is whatever the emitter chose: C1 controls and bidi overrides survive JSON quoting.
        else
          process.stdout.write(
            `${printable(`${time} ${e.topic} #${e.seq}${e.gap ? ` (missed ${e.gap})` : ""} ${JSON.stringify(toJson(e.data))}`)}\n`,
          );
      }
    });
  },
};
