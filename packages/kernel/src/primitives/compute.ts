import { type CborMap, type CborValue, decodeCanonical } from "@kpip/protocol";
import type { ComputeEngine } from "../compute/engine.js";
import type { OpRecord, OpStore } from "../store/types.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

/** The op of `op://<id>`, if it belongs to the caller; another persona's op is reported as absent. */
function ownOp(store: OpStore, ctx: OpContext): OpRecord {
  const id = ctx.target.segments.join("/");
  const op = /^[0-9a-f]{32}$/.test(id) ? store.getOp(id) : undefined;
  if (!op || op.persona !== ctx.persona) throw new OpError("SEMANTIC", `no op ${ctx.targetUri}`);
  return op;
}

function statusPayload(op: OpRecord): CborMap {
  const p: CborMap = { op: `op://${op.id}`, kind: op.kind, name: op.name, state: op.state, createdAt: op.createdAt };
  if (op.startedAt !== null) p.startedAt = op.startedAt;
  if (op.finishedAt !== null) p.finishedAt = op.finishedAt;
  if (op.deadline !== null) p.deadline = op.deadline;
  if (op.errorClass !== null) p.errorClass = op.errorClass;
  if (op.message !== null) p.message = op.message;
  return p;
}

/** compute.submit (DEFERRED) and the follow-up ops op.status / op.result / op.cancel / op.list. */
export function computeFamily(engine: ComputeEngine, store: OpStore): PrimitiveFamily {
  return {
    name: "compute",
    ops: [
      {
        op: "compute.submit",
        description:
          "Start a long-running op and answer DEFERRED with its op:// id. Target op://command/<executable> runs an allowed command (args.args: text array, no shell); op://task/<name> runs an embedder's task function in a worker.",
        targets: ["op"],
        args: {
          args: { type: "any", description: "command arguments (array of text) or the task's input" },
          timeoutMs: { type: "uint", description: "stop the op after this long (the intent deadline, if earlier, wins)" },
        },
        idempotent: false,
        effects: true,
        handler: (ctx): OpResult => {
          const [kind, ...rest] = ctx.target.segments;
          const name = rest.join("/");
          if ((kind !== "command" && kind !== "task") || rest.length !== 1 || name === "*" || name === "**") {
            throw new OpError("SEMANTIC", "compute.submit takes op://command/<executable> or op://task/<name>");
          }
          const args = (ctx.args.args ?? (kind === "command" ? [] : null)) as CborValue;
          if (kind === "command" && (!Array.isArray(args) || !args.every((a) => typeof a === "string"))) {
            throw new OpError("SEMANTIC", "a command's args must be an array of text strings");
          }
          if (kind === "task" && !engine.hasTask(name)) throw new OpError("SEMANTIC", `no task ${name} is registered`);
          const timeout = ctx.args.timeoutMs as number | undefined;
          const deadlines = [ctx.deadline, timeout === undefined ? undefined : Date.now() + timeout].filter(
            (d): d is number => d !== undefined,
          );
          const op = engine.submit(
            ctx.persona,
            ctx.session,
            kind,
            name,
            args,
            deadlines.length ? Math.min(...deadlines) : undefined,
          );
          return { status: "DEFERRED", payload: { op: `op://${op.id}`, id: op.id } };
        },
      },
      {
        op: "op.status",
        description: "Where a DEFERRED op stands: queued, running, succeeded, failed, cancelled.",
        targets: ["op"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx) => ({ status: "SUCCESS", payload: statusPayload(ownOp(store, ctx)) }),
      },
      {
        op: "op.result",
        description: "A finished op's result: SUCCESS with it, FAILURE with the op's error class, or DEFERRED while it runs.",
        targets: ["op"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx): OpResult => {
          const op = ownOp(store, ctx);
          if (op.state === "queued" || op.state === "running") return { status: "DEFERRED", payload: statusPayload(op) };
          if (op.state === "succeeded") {
            return {
              status: "SUCCESS",
              payload: { ...statusPayload(op), result: op.result ? decodeCanonical(op.result) : null },
            };
          }
          const cls = (op.errorClass ?? "INTERNAL") as OpError["errorClass"];
          throw new OpError(cls, `op ${op.state}: ${op.message ?? "no detail"}`);
        },
      },
      {
        op: "op.cancel",
        description: "Cancel a queued or running op.",
        targets: ["op"],
        args: {},
        idempotent: true,
        effects: true,
        handler: (ctx) => {
          const op = ownOp(store, ctx);
          const cancelled = engine.cancel(op.id);
          return { status: "SUCCESS", payload: { op: `op://${op.id}`, cancelled, state: store.getOp(op.id)?.state ?? op.state } };
        },
      },
      {
        op: "op.list",
        description: "The caller's recent ops, newest first.",
        targets: ["kernel"],
        args: { limit: { type: "uint", description: "most ops (default 100)" } },
        idempotent: true,
        effects: false,
        handler: (ctx) => ({
          status: "SUCCESS",
          payload: {
            ops: store.listOps(ctx.persona, Math.min((ctx.args.limit as number | undefined) ?? 100, 1000)).map(statusPayload),
          },
        }),
      },
    ],
  };
}
