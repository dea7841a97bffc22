import {
  type CborMap,
  PROTOCOL_VERSION,
  SUPPORTED_VERSIONS,
  systemDescribe,
  systemHealth,
  systemInfo,
  systemStatus,
} from "@kpip/protocol";
import { implement } from "./implement.js";
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
      implement(systemHealth, {
        handler: () => ({ status: "SUCCESS", payload: { status: "ok", uptimeMs: Date.now() - info.startedAt } }),
      }),
      implement(systemInfo, {
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
      }),
      implement(systemStatus, {
        handler: (ctx) => ({ status: "SUCCESS", payload: info.status(ctx.persona) }),
      }),
      implement(systemDescribe, {
        handler: () => ({ status: "SUCCESS", payload: router.describe() }),
      }),
    ],
  };
}
