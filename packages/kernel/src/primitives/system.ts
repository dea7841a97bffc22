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
  /**
   * Open sessions as `persona` may count them: the operator every session; any other persona its
   * own and its sub-personas' (other personas' coming and going is not its business).
   */
  sessions: (persona: string) => number;
  /**
   * What `system.status` shows `persona`: the operator (the admin persona) sees transports, the
   * home, every session, ops, agents, the audit head and events; any other persona sees the
   * kernel's id, version and uptime and its own sessions (its own and its sub-personas'), nothing
   * of other personas nor of the host.
   */
  status: (persona: string) => CborMap;
  /** The process sandbox: mode ("bwrap" | "none"), whether usable, and why not. */
  sandbox: () => CborMap;
  /** Why the kernel serves less than it should now (its storage full or failed), or undefined. */
  degraded?: () => string | undefined;
}

/** system.health, system.info, system.describe. */
export function systemFamily(info: SystemInfo, router: Router): PrimitiveFamily {
  return {
    name: "system",
    ops: [
      implement(systemHealth, {
        handler: () => {
          const why = info.degraded?.();
          const uptimeMs = Date.now() - info.startedAt;
          const payload: CborMap = why ? { status: "degraded", uptimeMs, reason: why } : { status: "ok", uptimeMs };
          return { status: "SUCCESS", payload };
        },
      }),
      implement(systemInfo, {
        handler: (ctx) => ({
          status: "SUCCESS",
          payload: {
            kernel: info.kernelId,
            version: info.version,
            protocol: PROTOCOL_VERSION,
            protocols: [...SUPPORTED_VERSIONS],
            startedAt: info.startedAt,
            sessions: info.sessions(ctx.persona),
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
