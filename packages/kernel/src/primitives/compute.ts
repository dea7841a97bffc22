import {
  type CborMap,
  computeSubmit,
  decodeCanonical,
  grantAllows,
  opCancel,
  opList,
  opResult,
  opStatusOp,
} from "@kpip/protocol";
import type { ComputeEngine } from "../compute/engine.js";
import type { OpRecord, OpStore, OpSummary } from "../store/types.js";
import { implement } from "./implement.js";
import { pageAnswer, pageRequest } from "./paging.js";
import { PROCESS_CURSORS, type SeqCursors } from "./seq-cursor.js";
import { type OpContext, OpError, OpFailure, type OpResult, type PrimitiveFamily } from "./types.js";

/** The right a grant needs for a sandboxed process to reach the network (default: no network). */
export const NETWORK_RIGHT = "sandbox.network";

/**
 * Which spawn a persona's requests come from (AgentManager.spawnOf): null for a persona that is
 * no agent, an agent persona's running spawn (its token id), undefined for none.
 */
export type SpawnOf = (persona: string) => string | null | undefined;

/**
 * The op of `op://<id>`, if it belongs to the caller (or the caller is the admin, who sees and
 * may cancel every op); another persona's op is reported as absent, and so is one an earlier
 * agent of the caller's name (its persona id) submitted. Without its result (`result` null):
 * only op.result answers it, and reads it once it has held its size.
 */
function ownOp(store: OpStore, engine: ComputeEngine, ctx: OpContext, admin: string, spawnOf: SpawnOf): OpRecord {
  const id = ctx.target.segments.join("/");
  const row = /^[0-9a-f]{32}$/.test(id) ? store.getOp(id, false) : undefined;
  // What a full disk kept from the row is read over it (ComputeEngine.current): a kept end brings its result.
  const op = row && engine.current(row);
  if (!op || (ctx.persona !== admin && (op.persona !== ctx.persona || op.spawn !== spawnOf(ctx.persona))))
    throw new OpError("SEMANTIC", `no op ${ctx.targetUri}`);
  return op;
}

/** Whether the request asks for network access from the sandbox (its ownership rule, {@link networkRight}, allowed it). */
export function networkGranted(ctx: OpContext): boolean {
  if (ctx.args.network === undefined || ctx.args.network === false) return false;
  if (ctx.args.network !== true) throw new OpError("SEMANTIC", "network must be a boolean");
  return true;
}

/** The ownership rule of an op that may ask for the network: the grant must also allow {@link NETWORK_RIGHT} on the target. */
export function networkRight(ctx: OpContext): true | string {
  if (ctx.args.network !== true || (ctx.grant && grantAllows(ctx.grant, NETWORK_RIGHT, ctx.targetUri))) return true;
  return `network access needs a grant of ${NETWORK_RIGHT} on ${ctx.targetUri}`;
}

function statusPayload(op: OpSummary): CborMap {
  const p: CborMap = { op: `op://${op.id}`, kind: op.kind, name: op.name, state: op.state, createdAt: op.createdAt };
  if (op.startedAt !== null) p.startedAt = op.startedAt;
  if (op.finishedAt !== null) p.finishedAt = op.finishedAt;
  if (op.deadline !== null) p.deadline = op.deadline;
  if (op.errorClass !== null) p.errorClass = op.errorClass;
  if (op.message !== null) p.message = op.message;
  return p;
}

/** compute.submit (DEFERRED) and the follow-up ops op.status / op.result / op.cancel / op.list. */
export function computeFamily(
  engine: ComputeEngine,
  store: OpStore,
  admin: string,
  cursors: SeqCursors = PROCESS_CURSORS,
  spawnOf: SpawnOf = () => null,
): PrimitiveFamily {
  return {
    name: "compute",
    ops: [
      implement(computeSubmit, {
        // Only a command reaches the network (a task runs in a worker).
        owns: (ctx) => (ctx.target.segments[0] === "command" ? networkRight(ctx) : true),
        handler: (ctx): OpResult => {
          const [kind, ...rest] = ctx.target.segments;
          const name = rest.join("/");
          if ((kind !== "command" && kind !== "task") || rest.length !== 1 || name === "*" || name === "**") {
            throw new OpError("SEMANTIC", "compute.submit takes op://command/<executable> or op://task/<name>");
          }
          const args = ctx.args.args ?? (kind === "command" ? [] : null);
          if (kind === "command" && (!Array.isArray(args) || !args.every((a) => typeof a === "string"))) {
            throw new OpError("SEMANTIC", "a command's args must be an array of text strings");
          }
          if (kind === "task" && !engine.hasTask(name)) throw new OpError("SEMANTIC", `no task ${name} is registered`);
          const network = kind === "command" && networkGranted(ctx);
          const timeout = ctx.args.timeoutMs;
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
            kind === "command" ? { grant: ctx.grant, network } : undefined,
            // The authorizing grant: its expiry caps the deadline, a revocation covering it cancels the op.
            ctx.grant,
            spawnOf(ctx.persona) ?? null,
          );
          return { status: "DEFERRED", payload: { op: `op://${op.id}`, id: op.id }, audit: { op: op.id } };
        },
      }),
      implement(opStatusOp, {
        // A look at or a stop of its own work: admitted past `concurrent` within an allowance (ResourceLedger.admit).
        control: true,
        handler: (ctx) => ({ status: "SUCCESS", payload: statusPayload(ownOp(store, engine, ctx, admin, spawnOf)) }),
      }),
      implement(opResult, {
        handler: (ctx): OpResult => {
          const op = ownOp(store, engine, ctx, admin, spawnOf);
          if (op.state === "queued" || op.state === "running") return { status: "DEFERRED", payload: statusPayload(op) };
          // Counted before the result is read: a burst of op.result on a large result is refused, not built.
          // A result here is one a full disk kept from the store (ownOp reads none from it).
          const kept = op.result;
          const size = kept ? kept.byteLength : store.opResultBytes(op.id);
          if (size) ctx.holdAnswerBytes(size);
          // Handed out: from now on a trim of the tree's finished ops may take it (its poller has it).
          // Only once the hold is granted: a read refused by the answer budget (the kernel's, which
          // every persona's reads fill) handed nothing out, and the result keeps its unread place.
          store.claimOp(op.id, Date.now());
          const stored = kept ?? (size ? (store.getOp(op.id)?.result ?? null) : null);
          const payload = { ...statusPayload(op), result: stored ? decodeCanonical(stored) : null };
          if (op.state === "succeeded") return { status: "SUCCESS", payload };
          // Failed or cancelled: the FAILURE of its class, with what it left (a command that ran:
          // its exit code, signal and captured output — what its persona debugs it with).
          const cls = (op.errorClass ?? "INTERNAL") as OpError["errorClass"];
          throw new OpFailure(cls, `op ${op.state}: ${op.message ?? "no detail"}`, payload);
        },
      }),
      implement(opCancel, {
        control: true,
        handler: (ctx) => {
          const op = ownOp(store, engine, ctx, admin, spawnOf);
          const cancelled = engine.cancel(op.id);
          return {
            status: "SUCCESS",
            payload: { op: `op://${op.id}`, cancelled, state: engine.current(store.getOp(op.id, false) ?? op).state },
          };
        },
      }),
      implement(opList, {
        control: true,
        handler: (ctx): OpResult => {
          const all = ctx.persona === admin;
          const page = pageRequest(ctx.args, "an op list", cursors);
          // An agent persona's page: its own spawn's ops (none when no agent runs as it).
          const spawn = all ? undefined : spawnOf(ctx.persona);
          const ops =
            !all && spawn === undefined ? [] : store.listOps(all ? undefined : ctx.persona, page.limit + 1, page.after, spawn);
          const describe = (op: OpSummary) =>
            all ? { ...statusPayload(op), persona: op.persona, ...(op.spawn ? { spawn: op.spawn } : {}) } : statusPayload(op);
          return pageAnswer(
            ops.map((op) => engine.current(op)),
            page,
            "ops",
            describe,
            (op) => page.seal(op.seq),
          );
        },
      }),
    ],
  };
}
