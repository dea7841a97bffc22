import { createPublicKey } from "node:crypto";
import { join, resolve } from "node:path";
import { type CborMap, HEADER_SIZE, personaWithin, rawPublicKey } from "@kpip/protocol";
import { AgentManager } from "./agents/manager.js";
import { AnchorFile } from "./audit/anchors.js";
import { checkInheritedChain } from "./audit/inherit.js";
import { configDigest, KernelRecords } from "./audit/kernel-records.js";
import { AuditLog } from "./audit/log.js";
import { RefusalLimiter } from "./audit/refusals.js";
import type { Authorizer } from "./auth/authorizer.js";
import { CapEnforcer } from "./auth/enforcer.js";
import { RootKeys } from "./auth/keys.js";
import { ComputeEngine, type TaskRegistration } from "./compute/engine.js";
import { ConfigError, type KernelConfig, resolveConfig } from "./config.js";
import { EventBus } from "./events/bus.js";
import {
  acquireHome,
  ensureAdmin,
  ensureAdminToken,
  ensureHome,
  FIRST_START_ACTOR,
  HOME_FILES,
  kernelId,
  loadKernelKey,
} from "./home.js";
import { createLogger, type Logger } from "./log.js";
import { KernelMetrics } from "./metrics/metrics.js";
import { AnswerBudget } from "./pipeline/answer-budget.js";
import { DedupeCache } from "./pipeline/dedupe.js";
import { Pipeline } from "./pipeline/pipeline.js";
import { agentFamily } from "./primitives/agent.js";
import { computeFamily } from "./primitives/compute.js";
import { eventFamily } from "./primitives/event.js";
import { personaFamily } from "./primitives/persona.js";
import { resourceFamily } from "./primitives/resource.js";
import { Router } from "./primitives/router.js";
import { storageFamily } from "./primitives/storage.js";
import { UploadTable } from "./primitives/storage-uploads.js";
import { systemFamily } from "./primitives/system.js";
import { tokenFamily } from "./primitives/token.js";
import type { PrimitiveFamily } from "./primitives/types.js";
import { ResourceLedger } from "./resources/ledger.js";
import { ProcessTable } from "./sandbox/processes.js";
import type { Sandbox } from "./sandbox/sandbox.js";
import { openSandbox, sandboxInfo, sandboxSummary } from "./sandbox/setup.js";
import type { Connection } from "./session/connection.js";
import { PeerLogLimiter } from "./session/log-limit.js";
import { PersonaKeys } from "./session/persona-keys.js";
import { PreauthBudget } from "./session/preauth.js";
import { Session, type SessionHost, type SessionLimitsConfig } from "./session/session.js";
import { BlobStore } from "./store/blobs.js";
import { WalCheckpointer } from "./store/checkpointer.js";
import { DedupePruner } from "./store/dedupe-pruner.js";
import { SqliteStore } from "./store/sqlite.js";
import { GrpcListener } from "./transport/grpc.js";
import { memoryPair } from "./transport/memory.js";
import { loadShmNative, sweepShmSegments } from "./transport/shm-native.js";
import { prepareSocketPath, UdsListener } from "./transport/uds.js";
import { KERNEL_VERSION } from "./version.js";

export interface KernelOptions extends Partial<KernelConfig> {
  /** Replaces the capability enforcer's decisions (tokens are still verified and bound by it). */
  authorizer?: Authorizer;
  /** The kernel's clock (tests move time to expire tokens). */
  clock?: () => number;
  logger?: Logger;
  /** The bubblewrap program to use (default: found on PATH); tests point it at a broken one. */
  bwrapPath?: string;
  /**
   * Where `KPIP_<NAME>` settings are read from. Default: nowhere — an embedded kernel (and every
   * test) takes only what it is given here and in the home's config file; `kpip kernel` passes
   * `process.env`.
   */
  env?: NodeJS.ProcessEnv;
  /** The config file; default `<home>/config.json`, read when it exists (this one must exist). */
  configFile?: string;
}

/**
 * The KPIP kernel, embeddable: `const k = new Kernel({ home }); await k.start(); … await k.stop()`.
 * It owns the store, the audit log, the op router and the listeners; every request from
 * every transport goes through the same session and pipeline code.
 */
export class Kernel {
  readonly config: KernelConfig;
  readonly router = new Router();
  log: Logger;
  private store: SqliteStore | undefined;
  private auditLog: AuditLog | undefined;
  private checkpointer: WalCheckpointer | undefined;
  private uploads: UploadTable | undefined;
  private anchors: AnchorFile | undefined;
  private releaseHome: (() => void) | undefined;
  private listener: UdsListener | undefined;
  private grpcListener: GrpcListener | undefined;
  /** "host:port" the gRPC transport listens on, when configured. */
  grpcAddress: string | undefined;
  private readonly sessions = new Set<Session>();
  private readonly sessionsById = new Map<string, Session>();
  /** Connections that have not attested yet: counted here, never against maxSessions. */
  private preauth: PreauthBudget<Session> | undefined;
  /** Sessions that attested (the ones maxSessions bounds). */
  private attested = 0;
  /** Topic routing for event.* and the kernel's own events. */
  readonly events: EventBus;
  private timer: NodeJS.Timeout | undefined;
  private dedupePruner: DedupePruner | undefined;
  private host: SessionHost | undefined;
  private id = "";
  private startedAt = 0;
  private state: "new" | "starting" | "running" | "stopping" | "stopped" = "new";
  private adminIdentityPath = "";
  private adminTokenPath = "";
  private enforcerRef: CapEnforcer | undefined;
  private pendingFamilies: PrimitiveFamily[] = [];
  private pendingTasks: [string, TaskRegistration][] = [];
  private records: KernelRecords | undefined;
  private compute: ComputeEngine | undefined;
  private pipeline: Pipeline | undefined;
  private agents: AgentManager | undefined;
  private sandbox: Sandbox | undefined;
  private processes: ProcessTable | undefined;
  /** Prometheus series (always counted; served when metricsListen is set). */
  metrics: KernelMetrics | undefined;
  /** Where /metrics is served, when it is. */
  metricsAddress = "";

  constructor(private readonly options: KernelOptions = {}) {
    const { authorizer: _a, logger: _l, bwrapPath: _b, env, configFile, ...flags } = options;
    this.config = resolveConfig({
      flags: flags as Partial<Record<keyof KernelConfig, unknown>>,
      env: env ?? {},
      ...(configFile === undefined ? {} : { configFile }),
    });
    this.log = options.logger ?? createLogger(this.config.logLevel);
    const c = this.config;
    this.events = new EventBus({
      highWaterBytes: 1 << 20,
      queueBytes: c.eventQueueBytes,
      sessionBytes: c.eventSessionBytes,
      kernelBytes: c.eventKernelBytes,
      perSession: c.maxSubscriptionsPerSession,
      perPersona: c.maxSubscriptionsPerPersona,
      total: c.maxSubscriptions,
    });
  }

  /** Adds an embedder's primitive family; it is authorized, audited and described like a built-in. */
  register(family: PrimitiveFamily): void {
    if (this.state === "new") this.pendingFamilies.push(family);
    else this.router.register(family);
  }

  /** Registers an embedder's task function, run by compute.submit on op://task/<name> in a worker thread. */
  registerTask(name: string, reg: TaskRegistration): void {
    if (this.compute) this.compute.registerTask(name, reg);
    else this.pendingTasks.push([name, reg]);
  }

  get kernelId(): string {
    return this.id;
  }
  get socketPath(): string {
    return this.config.socket;
  }
  get adminIdentity(): string {
    return this.adminIdentityPath;
  }
  /** File holding the admin persona's root token (0600). */
  get adminToken(): string {
    return this.adminTokenPath;
  }
  /** The capability enforcer (mint tokens for tests and embedders). */
  get enforcer(): CapEnforcer {
    if (!this.enforcerRef) throw new Error("kernel not started");
    return this.enforcerRef;
  }
  get sessionCount(): number {
    return this.sessions.size;
  }
  /** The store (for the CLI's offline commands and tests). */
  get database(): SqliteStore {
    if (!this.store) throw new Error("kernel not started");
    return this.store;
  }

  async start(): Promise<void> {
    if (this.state !== "new") throw new Error(`kernel cannot start from state ${this.state}`);
    this.state = "starting";
    const c = this.config;
    try {
      ensureHome(c.home);
      // Before this kernel writes anything (recovery, the offline journal) it must own the home:
      // two writers would fork the audit chain. Then the socket (another home may serve it).
      this.releaseHome = acquireHome(c.home);
      await prepareSocketPath(c.socket);
      const key = loadKernelKey(c.home);
      const dbPath = join(c.home, HOME_FILES.database);
      const store = new SqliteStore(dbPath);
      this.store = store;
      this.checkpointer = new WalCheckpointer(store, dbPath, this.log);
      this.id = kernelId(store);
      this.adminIdentityPath = ensureAdmin(c.home, store, c.adminPersona);
      this.startedAt = Date.now();
      this.events.operator = c.adminPersona;
      // Before the first append: never sign over a chain rewritten without the key.
      checkInheritedChain(store, rawPublicKey(createPublicKey(key)), c.auditCheckpointEvery);
      const anchors = this.openAnchors();
      const audit = new AuditLog(store, this.id, key, {
        batchMax: c.auditBatchMax,
        checkpointEvery: c.auditCheckpointEvery,
        checkpointIntervalMs: c.auditCheckpointIntervalMs,
        intentMaxBytes: c.auditIntentMaxBytes,
        onCheckpoint: anchors ? (cp) => anchors.append(cp) : undefined,
      });
      this.auditLog = audit;
      // A chain that does not end with a stop (before this start's own records): the previous run was killed or crashed.
      const last = store.lastAudit();
      const journalled = audit.recordOfflineJournal();
      // The kernel's own first start (creating the admin persona) is journalled too: not news to report as such.
      const offline = journalled.filter((r) => r.actor !== FIRST_START_ACTOR).length;
      if (journalled.length > offline)
        this.log.info({ admin: c.adminPersona, identity: this.adminIdentityPath }, "first start: created the admin persona");
      if (offline) this.log.info({ records: offline }, "administrative changes made without the kernel are now audited");
      const sandbox = openSandbox(c, this.log, this.options.bwrapPath);
      this.sandbox = sandbox;
      const records = new KernelRecords(audit);
      this.records = records;
      records.record({
        op: "kernel.start",
        target: "kernel://",
        message: sandboxSummary(sandbox),
        detail: {
          ...this.runDetail(),
          reason: last && last.op !== "kernel.stop" ? "the previous run ended without kernel.stop (killed or crashed)" : "start",
        },
      });
      // Committed before start() returns, like everything else the start puts on the record.
      audit.flush();
      const processes = new ProcessTable({ max: c.maxProcesses, perPersona: c.maxProcessesPerPersona });
      this.processes = processes;
      this.router.register(
        systemFamily(
          {
            kernelId: this.id,
            version: KERNEL_VERSION,
            startedAt: this.startedAt,
            sessions: () => this.sessions.size,
            status: (persona) => this.status(persona),
            sandbox: () => sandboxInfo(this.sandbox),
          },
          this.router,
        ),
      );
      const ledger = new ResourceLedger(store, { workspaceStorageBytes: c.workspaceStorageBytes }, this.options.clock);
      // Object bodies above the inline size live in <home>/objects; what a crash left unnamed goes now.
      const blobs = new BlobStore(join(c.home, "objects"), { sync: true, durable: () => store.syncWal() });
      const swept = blobs.sweep((h) => store.countBodyRefs(h) > 0);
      if (swept) this.log.info({ bodies: swept }, "removed object bodies no object names (left by an interrupted write)");
      const uploads = new UploadTable(blobs, {
        perPersona: c.maxUploadsPerPersona,
        total: c.maxUploads,
        totalBytes: c.maxUploadBytes,
        idleMs: c.uploadIdleMs,
      });
      this.uploads = uploads;
      this.router.register(
        storageFamily(
          { store, blobs, ledger, uploads },
          {
            maxObjectBytes: c.maxObjectBytes,
            maxListPage: 1000,
            inlineBytes: c.objectInlineBytes,
            // A read's answer is one frame: its bytes plus the envelope.
            maxReadBytes: c.maxBodyBytes - Math.min(64 * 1024, Math.floor(c.maxBodyBytes / 2)),
          },
        ),
      );
      this.router.register(resourceFamily(ledger, { workspaceStorageBytes: c.workspaceStorageBytes }));
      const enforcer = new CapEnforcer(new RootKeys(c.home, this.options.clock), store, this.options.clock, {
        maxTokenBytes: c.maxTokenBytes,
        maxLiveTokens: c.maxLiveTokens,
        exempt: ["kernel", c.adminPersona],
      });
      enforcer.pruneExpired((this.options.clock ?? Date.now)() - c.tokenRetentionMs);
      enforcer.onDerived = (t, g, persona, session) => records.derived(t, g, persona, session);
      this.enforcerRef = enforcer;
      this.adminTokenPath = ensureAdminToken(c.home, enforcer, c.adminPersona);
      this.router.register(tokenFamily(enforcer, store, () => this.notifyRevoked(), c.adminPersona));
      const compute = new ComputeEngine(
        store,
        this.events,
        {
          workers: c.computeWorkers,
          resultTtlMs: c.opResultTtlMs,
          maxOutputBytes: c.maxOutputBytes,
          maxRuntimeMs: c.maxRuntimeMs,
        },
        this.log,
        {
          sandbox,
          processes,
          hold: (persona) => ledger.hold(persona),
          recordState: (op, state, from) => records.opState(op, state, from),
        },
      );
      this.compute = compute;
      for (const [name, reg] of this.pendingTasks) compute.registerTask(name, reg);
      this.pendingTasks = [];
      const interrupted = compute.recover();
      if (interrupted.length)
        this.log.warn({ ops: interrupted.length }, "ops interrupted by the previous stop were marked FAILED/INTERNAL");
      this.router.register(computeFamily(compute, store, c.adminPersona));
      const agents = new AgentManager(
        store,
        enforcer,
        this.events,
        {
          maxOutputBytes: c.maxOutputBytes,
          maxRuntimeMs: c.maxRuntimeMs,
          maxAgents: c.maxAgents,
          sandbox,
          processes,
          accept: (conn) => this.accept(conn),
          record: (act) => records.record(act),
        },
        this.log,
      );
      this.agents = agents;
      agents.recover();
      // What recovery put on the record (ops interrupted, agents lost) is committed before start() returns.
      audit.flush();
      this.router.register(agentFamily(agents, c.adminPersona));
      this.router.register(
        personaFamily(store, {
          admin: c.adminPersona,
          revokeToken: (id, by) => enforcer.revoke(id, by),
          registryChanged: () => this.registryChanged(),
        }),
      );
      this.router.register(eventFamily(this.events, (id) => this.sessionsById.get(id)));
      for (const f of this.pendingFamilies) this.router.register(f);
      this.pendingFamilies = [];
      const dedupe = new DedupeCache(c.dedupeWindowMs, store);
      const metrics = new KernelMetrics({
        sessions: () => {
          const by: Record<string, number> = {};
          for (const s of this.sessions) by[s.transport] = (by[s.transport] ?? 0) + 1;
          return by;
        },
        inFlight: () => [...this.sessions].reduce((n, s) => n + s.inFlight, 0),
        deferred: () => ({ running: compute.runningCount, queued: compute.queuedCount }),
        eventDrops: () => this.events.dropped,
        agents: () => agents.runningCount,
        usage: () => store.allUsage(),
        walBackground: () => this.checkpointer?.background ?? false,
      });
      if (this.checkpointer) this.checkpointer.onTopUp = () => metrics.walTopUps.inc();
      this.metrics = metrics;
      audit.onCommit = (records, seconds) => {
        metrics.auditBatch.observe(records);
        metrics.auditCommitSeconds.observe(seconds);
      };
      const refusals = new RefusalLimiter({
        sessionRate: c.auditRefusalRate,
        personaRate: c.auditRefusalPersonaRate,
        floodMax: c.auditRefusalFloodMax,
        intentMaxBytes: c.auditRefusalIntentMaxBytes,
      });
      const pipeline = new Pipeline(
        ledger,
        this.router,
        this.options.authorizer ?? enforcer,
        audit,
        dedupe,
        this.log,
        metrics,
        refusals,
        AnswerBudget.forWriteBuffer(c.maxWriteBuffer),
      );
      this.pipeline = pipeline;
      const limits: SessionLimitsConfig = {
        heartbeatMs: c.heartbeatMs,
        handshakeTimeoutMs: c.handshakeTimeoutMs,
        maxInFlight: c.maxInFlight,
        maxBodyBytes: c.maxBodyBytes,
        dedupeWindowMs: c.dedupeWindowMs,
        maxWriteBuffer: c.maxWriteBuffer,
      };
      this.host = {
        kernelId: this.id,
        limits,
        pipeline,
        audit,
        personaKeys: new PersonaKeys(store),
        bindToken: (table, persona, token, session) => enforcer.bind(table, persona, token, session),
        log: this.log,
        peerLog: new PeerLogLimiter(this.log, { lines: c.peerLogLines, windowMs: c.peerLogWindowMs }),
        admitSession: (s, persona) => this.admitSession(s, persona),
        sessionClosed: (s) => {
          if (!this.sessions.has(s)) return;
          this.preauth?.release(s);
          if (s.persona) this.attested--;
          this.sessions.delete(s);
          this.sessionsById.delete(s.id);
          this.events.dropSink(s.id);
          pipeline.sessionEnded(s.id);
        },
        sessionDrained: (s) => this.events.drained(s.id),
        shm: this.sharedMemory(),
      };
      const host = this.host;
      this.preauth = new PreauthBudget({ perTransport: c.preauthPerTransport, perPeer: c.preauthPerPeer });
      this.listener = new UdsListener(c.socket, (conn) => this.accept(conn));
      // Accept failures (EMFILE under a connection flood) come once per attempt: rate-limited like a peer's lines.
      this.listener.onError = (e) => host.peerLog.write("uds:listener", "error", { err: e }, "listener error");
      await this.listener.listen();
      if (c.grpcListen) {
        // One gRPC message holds at most one whole frame, plus slack for coalesced small ones.
        const grpcListener = new GrpcListener(
          c.grpcListen,
          { cert: c.grpcTlsCert || undefined, key: c.grpcTlsKey || undefined, clientCa: c.grpcTlsClientCa || undefined },
          HEADER_SIZE + c.maxBodyBytes + 64 * 1024,
          (conn) => this.accept(conn),
        );
        this.grpcListener = grpcListener;
        await grpcListener.start();
        this.grpcAddress = grpcListener.address;
        if (!grpcListener.secure) this.log.warn({ address: grpcListener.address }, "gRPC without TLS (loopback only)");
      }
      if (c.metricsListen) this.metricsAddress = await metrics.listen(c.metricsListen);
      // One timer for every session: heartbeats, dead peers, handshake timeouts, dedupe expiry.
      // Pruning (dedupe, ops, audit retention) on the first tick, then every minute.
      let lastPrune = 0;
      const dedupePruner = new DedupePruner(store);
      this.dedupePruner = dedupePruner;
      const tickMs = Math.max(50, Math.min(c.heartbeatMs, c.handshakeTimeoutMs) / 2);
      this.timer = setInterval(() => {
        const now = Date.now();
        for (const s of this.sessions) s.tick(now);
        host.peerLog.sweep(now);
        dedupe.sweep(now);
        this.applyOfflineChanges();
        pipeline.flushSuppressed();
        audit.checkpointIfDue(now);
        // Expired dedupe records go a slice at a time (a whole-table DELETE was a 60–180 ms stall).
        if (lastPrune === 0) store.pruneDedupe(now);
        else dedupePruner.run(now);
        if (now - lastPrune > 60_000) {
          lastPrune = now;
          store.pruneOps(now);
          enforcer.pruneExpired(now - c.tokenRetentionMs);
          this.pruneAudit();
        }
      }, tickMs);
      this.timer.unref();
      this.state = "running";
      this.log.info({ kernel: this.id, socket: c.socket, grpc: this.grpcAddress, home: c.home }, "kernel listening");
    } catch (e) {
      this.state = "stopped";
      this.sandbox?.close(!this.config.sandboxScratch);
      await this.listener?.close();
      await this.grpcListener?.close(0);
      await this.closeStorage();
      throw e;
    }
  }

  /** Shared memory for bulk bodies: swept of a crashed run's segments; said once when unavailable. */
  private sharedMemory(): SessionHost["shm"] {
    if (this.config.shmThreshold === 0) return undefined;
    const { native, reason } = loadShmNative();
    if (!native) {
      this.log.warn({ reason }, "shared memory unavailable: large bodies go inline on every session");
      return undefined;
    }
    const swept = sweepShmSegments(this.id);
    if (swept > 0) this.log.info({ swept }, "removed shared-memory segments left by an earlier run");
    return { native, threshold: this.config.shmThreshold };
  }

  /** What `system.status` and `kpip status` show: the operator's view, or (for another persona) its own. */
  status(persona = this.config.adminPersona): CborMap {
    const now = Date.now();
    const session = (s: Session) => ({
      id: s.id,
      persona: s.persona || "-",
      transport: s.transport,
      state: s.state,
      ageMs: now - s.createdAt,
      inFlight: s.inFlight,
    });
    if (persona !== this.config.adminPersona) {
      return {
        view: "persona",
        kernel: this.id,
        version: KERNEL_VERSION,
        uptimeMs: now - this.startedAt,
        persona,
        sessions: [...this.sessions].filter((s) => s.persona && personaWithin(s.persona, persona)).map(session),
      };
    }
    const cps = this.store?.checkpoints() ?? [];
    const last = cps[cps.length - 1];
    return {
      view: "operator",
      kernel: this.id,
      version: KERNEL_VERSION,
      uptimeMs: now - this.startedAt,
      home: this.config.home,
      transports: [
        { kind: "uds", address: this.config.socket },
        ...(this.grpcAddress ? [{ kind: "grpc", address: this.grpcAddress }] : []),
      ],
      sessions: [...this.sessions].map(session),
      ops: { running: this.compute?.runningCount ?? 0, queued: this.compute?.queuedCount ?? 0 },
      agents: { running: this.agents?.runningCount ?? 0 },
      sandbox: sandboxInfo(this.sandbox),
      processes: this.processes?.size ?? 0,
      ...(this.metricsAddress ? { metrics: `http://${this.metricsAddress}/metrics` } : {}),
      audit: {
        head: this.auditLog?.headSeq ?? 0,
        ...(last ? { checkpoint: { seq: last.seq, time: last.time } } : {}),
        ...(this.config.auditAnchorFile ? { anchors: resolve(this.config.auditAnchorFile) } : {}),
      },
      events: {
        subscriptions: this.events.subscriptionCount(),
        delivered: this.events.delivered,
        dropped: this.events.dropped,
        queuedBytes: this.events.queuedBytes,
      },
    };
  }

  /**
   * A connector for a client in the same process (embedding, tests): each connect() opens an
   * in-memory session that goes through the same session and pipeline code as a socket.
   * It satisfies @kpip/client's Connector interface structurally; the kernel does not import the client.
   */
  inMemoryConnector(): { transport: string; address: string; connect(): Promise<Connection> } {
    return {
      transport: "memory",
      address: "in-memory kernel",
      connect: async () => {
        if (this.state !== "running") throw new Error("kernel not running");
        const [kernelEnd, clientEnd] = memoryPair();
        this.accept(kernelEnd);
        return clientEnd;
      },
    };
  }

  /**
   * Accepts a connection from any transport into the pre-authentication budget: it counts as a
   * session only once it attests. A full budget sheds an older half-open connection, never a session.
   */
  accept(conn: Connection): void {
    const host = this.host;
    const preauth = this.preauth;
    if (this.state !== "running" || !host || !preauth) {
      conn.destroy();
      return;
    }
    const s = new Session(conn, host);
    this.sessions.add(s);
    this.sessionsById.set(s.id, s);
    for (const old of preauth.admit(s)) {
      this.metrics?.handshakesShed.inc();
      old.shed();
    }
  }

  /** Half-open connections now (pre-authentication budget). */
  get handshakingCount(): number {
    return this.preauth?.count ?? 0;
  }

  /** At attestation: maxSessions bounds attested sessions, the last `adminReserve` slots the admin's alone. */
  private admitSession(s: Session, persona: string): string | undefined {
    const c = this.config;
    // At most maxSessions - 1 reserved: some persona other than the admin can always get in.
    const reserve = Math.min(c.adminReserve, c.maxSessions - 1);
    const limit = persona === c.adminPersona ? c.maxSessions : c.maxSessions - reserve;
    if (this.attested >= limit) {
      return persona === c.adminPersona || reserve === 0
        ? `the kernel already has ${c.maxSessions} sessions`
        : `the kernel already has ${this.attested} sessions (the last ${reserve} of ${c.maxSessions} are reserved for the admin)`;
    }
    this.preauth?.release(s);
    this.attested++;
    return undefined;
  }

  /** The audit anchor file, when one is configured: opened now, so a bad path stops the start. */
  private openAnchors(): AnchorFile | undefined {
    const c = this.config;
    if (!c.auditAnchorFile) return undefined;
    const path = resolve(c.auditAnchorFile);
    let anchors: AnchorFile;
    try {
      anchors = new AnchorFile(path);
    } catch (e) {
      throw new ConfigError(`auditAnchorFile ${c.auditAnchorFile} cannot be opened for appending: ${(e as Error).message}`);
    }
    this.anchors = anchors;
    if (path.startsWith(`${resolve(c.home)}/`)) {
      this.log.warn({ file: path }, "audit anchors inside the home protect against little: keep them elsewhere");
    }
    anchors.onError = (e, seq) => {
      this.metrics?.auditAnchorFailures.inc();
      this.log.error({ err: e, file: path, seq }, "could not append an audit anchor");
    };
    return anchors;
  }

  /** Retention (auditRetainRecords): one chunk of the oldest records, pruned behind a signed checkpoint. */
  private pruneAudit(): void {
    try {
      const n = this.auditLog?.prune(this.config.auditRetainRecords) ?? 0;
      if (n) this.log.info({ records: n }, "pruned old audit records behind a signed checkpoint (auditRetainRecords)");
    } catch (e) {
      this.log.error({ err: e }, "could not prune the audit log; retrying on the next pass");
    }
  }

  /** Closes what start opened, in order: audit log (final checkpoint), anchors, WAL worker, store, home lock. */
  private async closeStorage(): Promise<void> {
    this.pipeline?.flushSuppressed();
    this.uploads?.close();
    this.auditLog?.close();
    await this.anchors?.close();
    await this.checkpointer?.stop();
    this.store?.close();
    this.releaseHome?.();
  }

  /** Tells every session holding a now-revoked handle, on its own notice channel. */
  private notifyRevoked(): void {
    const enforcer = this.enforcerRef;
    if (!enforcer) return;
    for (const sess of this.sessions) {
      for (const h of sess.handles.all()) {
        if (enforcer.isRevoked(h.grant)) {
          this.events.notify(sess, `topic://kernel/tokens/${h.grant.id}/revoked`, { token: h.grant.id, handle: h.handle });
        }
      }
    }
  }

  /**
   * After a registry change: every open session whose persona is no longer registered with the
   * key it attested with ends at once (AUTH/PERSONA_REMOVED), every agent running as a removed
   * persona is killed, and sessions holding revoked handles are told. Returns how many sessions ended.
   */
  private registryChanged(): number {
    let ended = 0;
    for (const s of [...this.sessions]) {
      if (s.state !== "ready" && s.state !== "closing") continue;
      const rec = this.store?.getPersona(s.persona);
      if (rec && s.attestedKey?.equals(Buffer.from(rec.publicKey))) continue;
      s.expel("PERSONA_REMOVED", `persona ${s.persona} was removed from the registry`);
      ended++;
    }
    const agents = this.agents?.killUnregistered() ?? 0;
    if (agents) this.log.info({ agents }, "agents of removed personas were killed");
    // Commands (and agents) started by a removed persona end with it too.
    const started = this.processes?.killWhere((p) => !this.store?.getPersona(p), "persona removed") ?? 0;
    if (started) this.log.info({ processes: started }, "processes started by removed personas were killed");
    this.notifyRevoked();
    return ended;
  }

  /**
   * Audits registry changes made on the home database without the kernel (the CLI while no
   * kernel answered, or another process beside this one) and applies them to the running
   * kernel: revocations they made take effect, and sessions of removed or re-keyed personas end.
   */
  private applyOfflineChanges(): void {
    try {
      const entries = this.auditLog?.recordOfflineJournal() ?? [];
      if (entries.length === 0) return;
      this.enforcerRef?.reloadRevocations();
      this.registryChanged();
    } catch (e) {
      this.log.error({ err: e }, "could not apply administrative changes made without the kernel; retrying on the next tick");
    }
  }

  /** What kernel.start and kernel.stop records say about this run. */
  private runDetail(): { version: string; configDigest: string; sandbox: string } {
    return { version: KERNEL_VERSION, configDigest: configDigest(this.config), sandbox: this.sandbox?.mode ?? "none" };
  }

  /**
   * Stops accepting, answers in-flight requests, says GOODBYE, flushes the audit log, removes the
   * socket. `reason` goes on the kernel.stop record (the CLI passes the signal's name).
   */
  async stop(reason = "stop()"): Promise<void> {
    if (this.state !== "running") return;
    this.state = "stopping";
    clearInterval(this.timer);
    this.dedupePruner?.stop();
    await this.listener?.close();
    // gRPC stops taking new streams now and finishes once the sessions below have ended theirs.
    const grpcClosed = this.grpcListener?.close(this.config.drainTimeoutMs + 1000);
    const drains = [...this.sessions].map((s) => s.drain());
    const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), this.config.drainTimeoutMs).unref());
    if ((await Promise.race([Promise.all(drains), timeout])) === "timeout") {
      this.log.warn({ sessions: this.sessions.size }, "drain timed out: closing remaining sessions");
    }
    for (const s of this.sessions) s.kill();
    await grpcClosed;
    await this.compute?.stop();
    await this.agents?.stop();
    this.sandbox?.close(!this.config.sandboxScratch);
    await this.metrics?.close();
    // Let handlers observe the abort and their outcome records land.
    await new Promise((r) => setImmediate(r));
    this.records?.record({ op: "kernel.stop", target: "kernel://", detail: { ...this.runDetail(), reason } });
    await this.closeStorage();
    // Segments kept for a grace period after their session (a body not yet taken) would outlive
    // a kernel that exits first: their timers do not hold the process. Every session has ended.
    sweepShmSegments(this.id);
    this.state = "stopped";
    this.log.info({ kernel: this.id }, "kernel stopped");
  }
}
