import { defineOp, type FieldSpec } from "./define.js";

/* compute.submit (DEFERRED) and the follow-up ops on op://<id> (PROTOCOL §9.4). */

const opUri = { type: "text", required: true, description: "op://<id>" } as const satisfies FieldSpec;

/** Where a DEFERRED op stands (op.status, op.result, op.list). */
const opStatus = {
  op: opUri,
  kind: { type: "text", required: true, description: "command or task" },
  name: { type: "text", required: true, description: "the executable or task name" },
  state: { type: "text", required: true, description: "queued, running, succeeded, failed or cancelled" },
  createdAt: { type: "uint", required: true, description: "when it was submitted, ms since the epoch" },
  startedAt: { type: "uint", description: "when it started" },
  finishedAt: { type: "uint", description: "when it finished" },
  deadline: { type: "uint", description: "when it is stopped" },
  errorClass: { type: "text", description: "a failed or cancelled op's error class (§10.1)" },
  message: { type: "text", description: "a failed or cancelled op's message" },
} as const;

export const computeSubmit = defineOp({
  op: "compute.submit",
  description:
    "Start a long-running op and answer DEFERRED with its op:// id. Target op://command/<executable> runs an allowed command (args.args: text array, no shell) in the process sandbox; op://task/<name> runs an embedder's task function in a worker.",
  targets: ["op"],
  args: {
    args: { type: "any", description: "command arguments (array of text) or the task's input" },
    network: { type: "bool", description: "let the command reach the network (needs sandbox.network on the target)" },
    timeoutMs: {
      type: "uint",
      description:
        "stop the op after this long (the intent deadline, if earlier, wins; never later than the kernel's maxRuntimeMs, nor the authorizing token's expiry)",
    },
  },
  result: { op: opUri, id: { type: "text", required: true, description: "the op's id" } },
  answers: { DEFERRED: "always: the payload names the op to follow with op.status / op.result (§9.4)" },
  idempotent: false,
  effects: true,
});

export const opStatusOp = defineOp({
  op: "op.status",
  description: "Where a DEFERRED op stands: queued, running, succeeded, failed, cancelled.",
  targets: ["op"],
  args: {},
  result: opStatus,
  idempotent: true,
  effects: false,
});

export const opResult = defineOp({
  op: "op.result",
  description:
    "A finished op's result: SUCCESS with it, FAILURE with the op's error class (and what it left), or DEFERRED while it runs. Until an op.result has handed it out, a result keeps its place among its tree's finished ops for the result grace (§9.4).",
  targets: ["op"],
  args: {},
  result: {
    ...opStatus,
    result: {
      type: "any",
      nullable: true,
      description:
        "what the op produced (null if nothing): a task's value; a command's {exitCode, signal, stdout, stderr, truncated}, also when it failed or was cancelled after it started; signal is SIGKILL when the kernel killed it, and a program that died of signal n in the sandbox has exitCode 128 + n (§9.4)",
    },
  },
  answers: {
    DEFERRED: "the op is queued or running: the payload is its status, without `result`",
    FAILURE:
      "the op failed or was cancelled: the error is its class, and the payload is its status with `result` (a command that ran: its exit code, signal and output)",
  },
  idempotent: true,
  effects: false,
});

export const opCancel = defineOp({
  op: "op.cancel",
  description: "Cancel a queued or running op.",
  targets: ["op"],
  args: {},
  result: {
    op: opUri,
    cancelled: {
      type: "bool",
      required: true,
      description:
        "whether this call stopped it: false when it had ended or was already being stopped (an earlier op.cancel, its deadline, a revocation)",
    },
    state: { type: "text", required: true, description: "its state now" },
  },
  idempotent: true,
  effects: true,
});

export const opList = defineOp({
  op: "op.list",
  description:
    "The caller's recent ops, newest first (every persona's, with its persona, for the admin), without their results (op.result reads one op's); PARTIAL with a cursor when more remain. Finished ops are kept for the kernel's result retention, a persona tree's newest and unread only, then forgotten.",
  targets: ["kernel"],
  args: {
    cursor: { type: "text", description: "the cursor of the previous page" },
    limit: { type: "uint", description: "ops per page (default 100, at most 1000)" },
  },
  result: {
    ops: {
      type: "array",
      required: true,
      description: "ops, newest first",
      items: {
        type: "map",
        description: "an op's status",
        fields: {
          ...opStatus,
          persona: { type: "text", description: "the admin's listing: whose op" },
          spawn: {
            type: "text",
            description:
              "the admin's listing, an agent's op: the agent's token id, the spawn of its persona that submitted it (§9.4); `removed` for an op of a persona since removed from the registry, which a persona registered again under its id does not see (§8.4)",
          },
        },
      },
    },
    cursor: { type: "text", description: "PARTIAL: pass it to get the next page" },
  },
  answers: { PARTIAL: "more ops remain: the payload's `cursor` asks for the next page" },
  idempotent: true,
  effects: false,
});

export const computeOps = [computeSubmit, opStatusOp, opResult, opCancel, opList] as const;
