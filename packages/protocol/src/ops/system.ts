import { defineOp, type FieldSpec } from "./define.js";

/* system.*: the kernel describing itself. */

const sandbox = {
  type: "map",
  required: true,
  description: "the process sandbox",
  fields: {
    mode: { type: "text", required: true, description: '"bwrap" or "none"' },
    usable: { type: "bool", required: true, description: "whether processes can be started" },
    reason: { type: "text", description: "why not, when not usable" },
    weakened: { type: "text", description: "what this bubblewrap cannot bound, when usable but older than the kernel needs" },
  },
} as const satisfies FieldSpec;

export const systemHealth = defineOp({
  op: "system.health",
  description: "Is the kernel serving? Returns status and uptime, and why it is degraded when it is.",
  targets: ["kernel"],
  args: {},
  result: {
    status: {
      type: "text",
      required: true,
      description: '"ok", or "degraded" while requests that change anything are refused (the kernel\'s storage full or failed)',
    },
    uptimeMs: { type: "uint", required: true, description: "ms since the kernel started" },
    reason: { type: "text", required: false, description: "why it is degraded (only then)" },
  },
  idempotent: true,
  effects: false,
});

export const systemInfo = defineOp({
  op: "system.info",
  description:
    "Kernel id, version, protocol versions, start time, session count and the process sandbox. The admin (operator) counts every open session; any other persona its own and its sub-personas' only.",
  targets: ["kernel"],
  args: {},
  result: {
    kernel: { type: "text", required: true, description: "the kernel's id" },
    version: { type: "text", required: true, description: "the kernel's software version" },
    protocol: { type: "uint", required: true, description: "the protocol version it prefers" },
    protocols: {
      type: "array",
      required: true,
      items: { type: "uint", description: "a version" },
      description: "every protocol version it speaks",
    },
    startedAt: { type: "uint", required: true, description: "start time, ms since the epoch" },
    sessions: { type: "uint", required: true, description: "open sessions (persona view: the caller's and its sub-personas')" },
    sandbox,
  },
  idempotent: true,
  effects: false,
});

const count = (description: string) => ({ type: "uint", required: true, description }) as const;

export const systemStatus = defineOp({
  op: "system.status",
  description:
    "The admin's (operator) view: version, uptime, home, transports, every session, deferred ops, agents, audit head and last checkpoint, event drops; any other persona: version, uptime and its own sessions only.",
  targets: ["kernel"],
  args: {},
  result: {
    view: { type: "text", required: true, description: '"operator" (the admin) or "persona"' },
    kernel: { type: "text", required: true, description: "the kernel's id" },
    version: { type: "text", required: true, description: "the kernel's software version" },
    uptimeMs: count("ms since the kernel started"),
    persona: { type: "text", description: "persona view: the caller" },
    sessions: {
      type: "array",
      required: true,
      description: "open sessions (persona view: the caller's and its sub-personas')",
      items: {
        type: "map",
        description: "a session",
        fields: {
          id: { type: "text", required: true, description: "session id" },
          persona: { type: "text", required: true, description: 'its persona ("-" before attestation)' },
          transport: { type: "text", required: true, description: "uds, grpc or memory" },
          state: { type: "text", required: true, description: "its state (§8.1)" },
          ageMs: count("ms since it opened"),
          inFlight: count("requests in flight"),
          pid: {
            type: "uint",
            description:
              "operator view, Unix socket: the pid of the process that connected (SO_PEERCRED); absent when the kernel cannot read it",
          },
        },
      },
    },
    home: { type: "text", description: "operator view: the kernel's home directory" },
    transports: {
      type: "array",
      description: "operator view: where it listens",
      items: {
        type: "map",
        description: "a listener",
        fields: {
          kind: { type: "text", required: true, description: "uds or grpc" },
          address: { type: "text", required: true, description: "socket path or host:port" },
        },
      },
    },
    ops: {
      type: "map",
      description: "operator view: deferred ops",
      fields: { running: count("running"), queued: count("queued") },
    },
    agents: { type: "map", description: "operator view: agents", fields: { running: count("running") } },
    sandbox: { ...sandbox, required: false, description: "operator view: the process sandbox" },
    processes: {
      type: "uint",
      description:
        "operator view: processes counted against the process bounds: running, or ended with their scratch directory still being removed",
    },
    metrics: { type: "text", description: "operator view: the metrics URL, when served" },
    audit: {
      type: "map",
      description: "operator view: the audit log",
      fields: {
        head: count("sequence number of the last record"),
        checkpoint: {
          type: "map",
          description: "the last checkpoint",
          fields: { seq: count("its sequence number"), time: count("when, ms since the epoch") },
        },
        anchors: { type: "text", description: "the file checkpoints are anchored to" },
      },
    },
    events: {
      type: "map",
      description: "operator view: the event bus",
      fields: {
        subscriptions: count("open subscriptions"),
        delivered: count("events delivered"),
        dropped: count("events dropped (slow subscribers)"),
        queuedBytes: count("bytes queued for subscribers"),
      },
    },
  },
  idempotent: true,
  effects: false,
});

const fieldDecl = {
  type: "map",
  description: "a field: type, required, description (and items, fields or values for its elements)",
} as const satisfies FieldSpec;

export const systemDescribe = defineOp({
  op: "system.describe",
  description: "The op table: every op with its targets, arguments, idempotency and effects.",
  targets: ["kernel"],
  args: {},
  result: {
    families: { type: "array", required: true, items: { type: "text", description: "a family" }, description: "op families" },
    ops: {
      type: "array",
      required: true,
      description: "every op, by name",
      items: {
        type: "map",
        description: "an op",
        fields: {
          op: { type: "text", required: true, description: "its name" },
          description: { type: "text", required: true, description: "what it does" },
          targets: {
            type: "array",
            required: true,
            items: { type: "text", description: "a scheme" },
            description: "target schemes",
          },
          idempotent: { type: "bool", required: true, description: "running it twice = once" },
          effects: { type: "bool", required: true, description: "it changes state" },
          args: { type: "map", required: true, values: fieldDecl, description: "its arguments by name" },
          result: { type: "map", values: fieldDecl, description: "its payload's fields (built-in ops)" },
          authorizeAs: {
            type: "text",
            description: "the op a grant must name to allow it, when not its own name (storage.upload.* → storage.write)",
          },
          reach: {
            type: "text",
            description:
              '"subtree" when it acts on everything under its target (a listing): a grant must cover <target>/** (storage.list, persona.list)',
          },
          sessionState: {
            type: "text",
            description:
              "what it leaves on the caller's session past its answer (a subscription, a watch, a bound token), when it does",
          },
        },
      },
    },
  },
  idempotent: true,
  effects: false,
});

export const systemOps = [systemHealth, systemInfo, systemStatus, systemDescribe] as const;
