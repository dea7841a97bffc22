import { type CborMap, PROTOCOL_VERSION, SUPPORTED_VERSIONS } from "@kpip/protocol";
import type { Router } from "./router.js";
import type { PrimitiveFamily } from "./types.js";

export interface SystemInfo {
  kernelId: string;
  version: string;
  startedAt: number;
  sessions: () => number;
  /**
   * What `system.status` shows `persona`: the operator (the admin persona) sees transports, the
   * home, every session, ops, agents, the audit head and events; any other persona sees the
   * kernel's id, version and uptime and its own sessions (its own and its sub-personas'), nothing
   * of other personas nor of the host.
   */
  status: (persona: string) => CborMap;
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
          "The admin's (operator) view: version, uptime, home, transports, every session, deferred ops, agents, audit head and last checkpoint, event drops; any other persona: version, uptime and its own sessions only.",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx) => ({ status: "SUCCESS", payload: info.status(ctx.persona) }),
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
