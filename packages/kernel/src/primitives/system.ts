import { type CborMap, PROTOCOL_VERSION, SUPPORTED_VERSIONS } from "@kpip/protocol";
import type { Router } from "./router.js";
import type { PrimitiveFamily } from "./types.js";

export interface SystemInfo {
  kernelId: string;
  version: string;
  startedAt: number;
  sessions: () => number;
  /** The operator's view: transports, sessions, ops, agents, audit head, events. */
  status: () => CborMap;
  /** The process sandbox: mode ("bwrap" | "none"), whether usable, and why not. */
  sandbox: () => CborMap;
}

/** system.health, system.info, system.describe. */
export function systemFamily(info: SystemInfo, router: Router): PrimitiveFamily {
  return {
    name: "system",
    ops: [
      {
        op: "system.health",
        description: "Is the kernel serving? Returns status and uptime.",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: () => ({ status: "SUCCESS", payload: { status: "ok", uptimeMs: Date.now() - info.startedAt } }),
      },
      {
        op: "system.info",
        description: "Kernel id, version, protocol versions, start time, session count and the process sandbox.",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: () => ({
          status: "SUCCESS",
          payload: {
            kernel: info.kernelId,
            version: info.version,
            protocol: PROTOCOL_VERSION,
            protocols: [...SUPPORTED_VERSIONS],
            startedAt: info.startedAt,
            sessions: info.sessions(),
            sandbox: info.sandbox(),
          },
        }),
      },
      {
        op: "system.status",
        description:
          "Operator view: version, uptime, home, transports, sessions, deferred ops, agents, audit head and last checkpoint, event drops.",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: () => ({ status: "SUCCESS", payload: info.status() }),
      },
      {
        op: "system.describe",
        description: "The op table: every op with its targets, arguments, idempotency and effects.",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: () => ({ status: "SUCCESS", payload: router.describe() }),
      },
    ],
  };
}
