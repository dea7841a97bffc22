import { createServer, type Server } from "node:http";
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { PlainHistogram } from "./plain-histogram.js";
import { RequestSeries } from "./request-series.js";

/** The kernel's Prometheus series. Cheap to update; served only when --metrics-listen is set. */
export class KernelMetrics {
  readonly registry = new Registry();
  private processSeries = false;
  /** Every answered request: its count by op and outcome, and its latency by op. */
  readonly requests = new RequestSeries(this.registry, [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3]);
  /** Per commit (a request at one in flight): plain histograms, no prom-client observe on the commit path. */
  readonly auditBatch = new PlainHistogram(
    this.registry,
    "kpip_audit_batch_records",
    "Audit records per commit",
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
  );
  readonly auditCommitSeconds = new PlainHistogram(
    this.registry,
    "kpip_audit_commit_seconds",
    "Time to commit one audit batch to the journal (the lag a response waits for)",
    [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1],
  );
  readonly walTopUps = new Counter({
    name: "kpip_wal_topups_total",
    help: "Checkpoints the kernel ran itself because the WAL kept growing under load",
    registers: [this.registry],
  });
  readonly walTopUpSeconds = new Counter({
    name: "kpip_wal_topup_seconds_total",
    help: "Time the kernel's thread spent in those checkpoints (every request waited it out)",
    registers: [this.registry],
  });
  readonly auditIndexFailures = new Counter({
    name: "kpip_audit_index_failures_total",
    help: "Times SQLite could not index journalled audit batches (they stay in the journal and are retried)",
    registers: [this.registry],
  });
  readonly auditAnchorFailures = new Counter({
    name: "kpip_audit_anchor_failures_total",
    help: "Signed checkpoints that could not be appended to the audit anchor file",
    registers: [this.registry],
  });
  readonly handshakesFailed = new Counter({
    name: "kpip_handshakes_failed_total",
    help: "Handshakes that ended before WELCOME, by transport and error code (ATTESTATION_FAILED, HANDSHAKE_TIMEOUT, TOO_MANY_SESSIONS, SESSION_RATE_LIMITED, …), whether or not each got an audit record of its own",
    labelNames: ["transport", "code"] as const,
    registers: [this.registry],
  });
  readonly handshakesShed = new Counter({
    name: "kpip_handshakes_shed_total",
    help: "Half-open connections shed by the pre-authentication budget to make room for newer ones",
    registers: [this.registry],
  });
  readonly grpcConnectionsRefused = new Counter({
    name: "kpip_grpc_connections_refused_total",
    help: "TCP connections to the gRPC listener closed as they arrived, by the bound they met (peer: grpcMaxConnectionsPerPeer, total: grpcMaxConnections, rate: the peer past grpcStreamPeerRate)",
    labelNames: ["bound"] as const,
    registers: [this.registry],
  });
  readonly grpcStreamsRefused = new Counter({
    name: "kpip_grpc_streams_refused_total",
    help: "gRPC streams refused before the kernel saw them, by reason (rate: grpcStreamPeerRate; headers: a header list over 8 KiB, its connection closed; malformed: refused by HTTP/2 itself (malformed headers, more than 32 fields), counted when their connection is closed; compressed: grpc-encoding other than identity)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly grpcConnectionsClosed = new Counter({
    name: "kpip_grpc_connections_closed_total",
    help: "Open gRPC connections the kernel closed (GOAWAY ENHANCE_YOUR_CALM), by reason (overhead: more bytes of frames carrying nothing, such as WINDOW_UPDATE, PRIORITY or PING, than the connection earned)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly grpcConnectionsShed = new Counter({
    name: "kpip_grpc_connections_shed_total",
    help: "Open TCP connections to the gRPC listener carrying no attested session, closed at grpcMaxConnections or their peer's grpcMaxConnectionsPerPeer to let a new one in",
    registers: [this.registry],
  });
  readonly taskWorkersEnded = new Counter({
    name: "kpip_task_workers_ended_total",
    help: "Idle task workers the kernel ended, by reason (evicted: the idle worker used longest ago, for another persona's new worker beyond computeIdleWorkers; spinning: its event loop kept busy after its task returned; removed: its persona left the registry; aged: idle past computeIdleWorkerMs)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly prunerFailures = new Counter({
    name: "kpip_pruner_failures_total",
    help: "Housekeeping pruner passes that failed (the store busy or closing) and were left to the next tick, by pruner (agents, ops, dedupe, tokens, audit)",
    labelNames: ["pruner"] as const,
    registers: [this.registry],
  });
  private server: Server | undefined;

  constructor(gauges: {
    sessions: () => Record<string, number>;
    inFlight: () => number;
    deferred: () => { running: number; queued: number };
    eventDrops: () => number;
    agents: () => number;
    usage: () => { scope: string; resource: string; amount: number }[];
    /**
     * Whether usage is labelled by persona and workspace id (`persona:<id>`): off, only the kind
     * (`persona`, `workspace`) with the amounts summed — whoever reads /metrics reads the labels.
     */
    usageIds?: boolean;
    /** Whether WAL checkpoints still run on the worker thread (false once they fell back to commits). */
    walBackground: () => boolean;
    /** Whether a sync of the database or the audit failed: the kernel then refuses every request. */
    storageFailed?: () => boolean;
    /** Whether the kernel's storage is full (a write refused room, the condition not yet ended: kernel/storage-space.ts). */
    storageFull?: () => boolean;
    /** Audit records and rows a full disk refused, kept in force and written once there is room (kernel/storage-space.ts). */
    keptForRoom?: () => number;
    /** Bytes the kernel's shared-memory segments hold (pages in /dev/shm). */
    shmBytes?: () => number;
    /** Audit records in the journal and not yet in SQLite (docs/architecture.md, the audit journal). */
    auditUnindexed: () => number;
  }) {
    const registers = [this.registry];
    new Gauge({
      name: "kpip_sessions",
      help: "Open sessions by transport",
      labelNames: ["transport"] as const,
      registers,
      collect() {
        this.reset();
        for (const [t, n] of Object.entries(gauges.sessions())) this.set({ transport: t }, n);
      },
    });
    new Gauge({
      name: "kpip_requests_in_flight",
      help: "Requests being executed",
      registers,
      collect() {
        this.set(gauges.inFlight());
      },
    });
    new Gauge({
      name: "kpip_deferred_ops",
      help: "DEFERRED ops by state",
      labelNames: ["state"] as const,
      registers,
      collect() {
        const d = gauges.deferred();
        this.set({ state: "running" }, d.running);
        this.set({ state: "queued" }, d.queued);
      },
    });
    new Gauge({
      name: "kpip_event_queue_drops_total",
      help: "Events dropped from slow subscribers' queues",
      registers,
      collect() {
        this.set(gauges.eventDrops());
      },
    });
    new Gauge({
      name: "kpip_quota_usage",
      help: gauges.usageIds
        ? "Resource usage by scope (persona:<id> or workspace:<id>) and resource"
        : "Resource usage by kind of scope (persona or workspace, summed over them): storage.bytes, and every named resource summed as named",
      labelNames: ["scope", "resource"] as const,
      registers,
      collect() {
        this.reset();
        if (gauges.usageIds) {
          for (const u of gauges.usage()) this.set({ scope: u.scope, resource: u.resource }, u.amount);
          return;
        }
        // No persona or workspace ids in the labels by default: the sum per kind and resource.
        // Nor the names of named resources (resource.alloc): each is text its persona chose, as
        // an id is — a project's name, or data a persona that may write nowhere else spells out
        // for anyone reaching /metrics (64 bytes a name, an allocation each). Summed as `named`.
        const sums = new Map<string, { scope: string; resource: string; amount: number }>();
        for (const u of gauges.usage()) {
          const i = u.scope.indexOf(":");
          const scope = i < 0 ? u.scope : u.scope.slice(0, i);
          const resource = u.resource === "storage.bytes" ? u.resource : "named";
          const key = `${scope}\n${resource}`;
          const x = sums.get(key);
          if (x) x.amount += u.amount;
          else sums.set(key, { scope, resource, amount: u.amount });
        }
        for (const x of sums.values()) this.set({ scope: x.scope, resource: x.resource }, x.amount);
      },
    });
    new Gauge({
      name: "kpip_agents_running",
      help: "Agents running",
      registers,
      collect() {
        this.set(gauges.agents());
      },
    });
    new Gauge({
      name: "kpip_storage_failed",
      help: "1 once a sync of the database or the audit failed (a disk error): every request is refused until a restart",
      registers,
      collect() {
        this.set(gauges.storageFailed?.() ? 1 : 0);
      },
    });
    new Gauge({
      name: "kpip_storage_full",
      help: "1 while the kernel's storage is full (a write refused room: ENOSPC, EDQUOT, SQLITE_FULL): requests that must be recorded or stored are refused RESOURCE",
      registers,
      collect() {
        this.set(gauges.storageFull?.() ? 1 : 0);
      },
    });
    new Gauge({
      name: "kpip_storage_kept",
      help: "Audit records (effects' outcomes, the kernel's own acts) and rows (ops' and agents' ends, the kernel's revocations) a full disk refused: in force, written once there is room",
      registers,
      collect() {
        this.set(gauges.keptForRoom?.() ?? 0);
      },
    });
    new Gauge({
      name: "kpip_shm_bytes",
      help: "Bytes of /dev/shm the kernel's shared-memory segments hold (bounded by maxShmBytes; past it large answers go inline)",
      registers,
      collect() {
        this.set(gauges.shmBytes?.() ?? 0);
      },
    });
    new Gauge({
      name: "kpip_wal_background_checkpoints",
      help: "1 while WAL checkpoints run on the worker thread, 0 once they fell back to checkpoint-on-commit",
      registers,
      collect() {
        this.set(gauges.walBackground() ? 1 : 0);
      },
    });
    new Gauge({
      name: "kpip_audit_unindexed_records",
      help: "Audit records committed to the journal and not yet indexed in SQLite (up to ~1,024: the index step runs every 1,024 records or 50 ms; growing past that means SQLite cannot take them)",
      registers,
      collect() {
        this.set(gauges.auditUnindexed());
      },
    });
  }

  /** Serves /metrics on host:port; resolves with the bound address. */
  async listen(hostPort: string): Promise<string> {
    const i = hostPort.lastIndexOf(":");
    // "[::1]:9464": the brackets are the address syntax, not part of the host.
    const host = hostPort.slice(0, i).replace(/^\[(.*)\]$/, "$1") || "127.0.0.1";
    const port = Number(hostPort.slice(i + 1));
    if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535)
      throw new Error(`metrics address ${hostPort} must be host:port`);
    // The process series only when served: collecting them runs a 10 ms event-loop-delay timer
    // and a GC observer in the kernel, which nobody reads when /metrics is off.
    if (!this.processSeries) collectDefaultMetrics({ register: this.registry, prefix: "kpip_process_" });
    this.processSeries = true;
    this.server = createServer((req, res) => {
      if (req.url !== "/metrics") {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (body) => res.writeHead(200, { "content-type": this.registry.contentType }).end(body),
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve, reject) => {
      this.server?.once("error", reject);
      this.server?.listen(port, host, resolve);
    });
    const a = this.server.address();
    return typeof a === "object" && a ? `${a.address}:${a.port}` : hostPort;
  }

  /**
   * Stops serving and ends every connection, a request in progress included: close() alone waits
   * for those, and stops the timers that would end a slow one (headersTimeout, requestTimeout),
   * so one local peer trickling a request's headers or body held the kernel's stop for ever.
   */
  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    const closed = new Promise((r) => s.close(() => r(undefined)));
    s.closeAllConnections();
    await closed;
  }
}
