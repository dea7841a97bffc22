import { resolve } from "node:path";
import { type CborMap, personaWithin } from "@kpip/protocol";
import type { AgentManager } from "../agents/manager.js";
import type { AuditLog } from "../audit/log.js";
import type { ComputeEngine } from "../compute/engine.js";
import type { KernelConfig } from "../config.js";
import type { EventBus } from "../events/bus.js";
import type { ProcessTable } from "../sandbox/processes.js";
import type { Sandbox } from "../sandbox/sandbox.js";
import { sandboxInfo } from "../sandbox/setup.js";
import type { Session } from "../session/session.js";
import type { AuditStore } from "../store/types.js";
import { KERNEL_VERSION } from "../version.js";

/** Where the kernel can be reached, known once its listeners are up. */
export interface Addresses {
  /** "host:port" of the gRPC transport, when configured. */
  grpc: string | undefined;
  /** "host:port" of /metrics, when served. */
  metrics: string;
}

/** What the status view reads. */
export interface StatusSources {
  readonly config: KernelConfig;
  readonly kernelId: string;
  readonly startedAt: number;
  readonly addresses: Addresses;
  sessions(): Session[];
  readonly store: AuditStore;
  readonly audit: AuditLog;
  readonly compute: ComputeEngine;
  readonly agents: AgentManager;
  readonly sandbox: Sandbox;
  readonly processes: ProcessTable;
  readonly events: EventBus;
}

/** What `system.status` and `kpip status` show: the operator's view, or (for another persona) its own. */
export function kernelStatus(x: StatusSources, persona: string): CborMap {
  const now = Date.now();
  const c = x.config;
  const session = (s: Session) => ({
    id: s.id,
    persona: s.persona || "-",
    transport: s.transport,
    state: s.state,
    ageMs: now - s.createdAt,
    inFlight: s.inFlight,
  });
  const head = { kernel: x.kernelId, version: KERNEL_VERSION, uptimeMs: now - x.startedAt };
  if (persona !== c.adminPersona) {
    const own = x.sessions().filter((s) => s.persona && personaWithin(s.persona, persona));
    return { view: "persona", ...head, persona, sessions: own.map(session) };
  }
  // The operator's: which process holds a Unix-socket session, as its session.open record says.
  const withPid = (s: Session) => {
    // Not read for a connection yet to say HELLO: a status call over a connect flood would pay for each.
    const p = s.state === "hello" ? undefined : s.conn.process;
    return typeof p === "object" ? { ...session(s), pid: p.pid } : session(s);
  };
  const last = x.store.checkpoints().at(-1);
  return {
    view: "operator",
    ...head,
    home: c.home,
    transports: [{ kind: "uds", address: c.socket }, ...(x.addresses.grpc ? [{ kind: "grpc", address: x.addresses.grpc }] : [])],
    sessions: x.sessions().map(withPid),
    ops: { running: x.compute.runningCount, queued: x.compute.queuedCount },
    agents: { running: x.agents.runningCount },
    sandbox: sandboxInfo(x.sandbox),
    processes: x.processes.size,
    ...(x.addresses.metrics ? { metrics: `http://${x.addresses.metrics}/metrics` } : {}),
    audit: {
      head: x.audit.headSeq,
      ...(last ? { checkpoint: { seq: last.seq, time: last.time } } : {}),
      ...(c.auditAnchorFile ? { anchors: resolve(c.auditAnchorFile) } : {}),
    },
    events: {
      subscriptions: x.events.subscriptionCount(),
      delivered: x.events.delivered,
      dropped: x.events.dropped,
      queuedBytes: x.events.queuedBytes,
    },
  };
}
