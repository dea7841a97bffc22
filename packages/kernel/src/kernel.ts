import type { CborMap } from "@kpip/protocol";
import type { Authorizer } from "./auth/authorizer.js";
import type { TokenService } from "./auth/tokens.js";
import type { TaskRegistration } from "./compute/engine.js";
import { type KernelConfig, resolveConfig } from "./config.js";
import { EventBus } from "./events/bus.js";
import { compose, type KernelServices } from "./kernel/compose.js";
import { checkDescriptorBudget } from "./kernel/fd-budget.js";
import { startHousekeeping, storeKept } from "./kernel/housekeeping.js";
import { inspector, type KernelInspector } from "./kernel/inspect.js";
import { openListeners } from "./kernel/listeners.js";
import { recordLateRecords } from "./kernel/storage-space.js";
import { tuneTiering } from "./kernel/v8-tiering.js";
import { warmFramePath } from "./kernel/warm-frames.js";
import { EVENT_HIGH_WATER_BYTES, GRPC_CLOSE_GRACE_MS } from "./limits.js";
import { createLogger, type Logger } from "./log.js";
import type { KernelMetrics } from "./metrics/metrics.js";
import { Router } from "./primitives/router.js";
import type { PrimitiveFamily } from "./primitives/types.js";
import type { Connection } from "./session/connection.js";
import type { GrpcListener } from "./transport/grpc.js";
import { memoryPair } from "./transport/memory.js";
import { sweepShmSegments } from "./transport/shm-native.js";
import type { UdsListener } from "./transport/uds.js";

export interface KernelOptions extends Partial<KernelConfig> {
  /** Replaces the capability enforcer's decisions (tokens are still verified and bound by it). */
  authorizer?: Authorizer;
  /** The kernel's clock (tests move time to expire tokens). */
  clock?: () => number;
  logger?: Logger;
  /** The bubblewrap program to use (default: found on PATH); tests point it at a broken one. */
  bwrapPath?: string;
  /** The upload hash worker's module (default: the kernel's own); tests give one that crashes. */
  uploadHashWorker?: URL;
  /**
   * Removes scratch directories (default: `rm -rf --one-file-system` in a child process,
   * sandbox/remove.ts); resolves with why it could not, never rejects. Tests hold a removal
   * open to see what waits for it.
   */
  scratchRemover?: (paths: string[]) => Promise<string | undefined>;
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
 * A facade: start() has the composition root (kernel/compose.ts) build every service, then
 * listens; every request from every transport goes through the same session and pipeline code.
 */
export class Kernel {
  readonly config: KernelConfig;
  readonly router = new Router();
  log: Logger;
  /** Topic routing for event.* and the kernel's own events. */
  readonly events: EventBus;
  private services: KernelServices | undefined;
  private inspector: KernelInspector | undefined;
  private listeners: { uds?: UdsListener; grpc?: GrpcListener } = {};
  private housekeeping: { stop(): void } | undefined;
  private state: "new" | "starting" | "running" | "stopping" | "stopped" = "new";
  private pendingFamilies: PrimitiveFamily[] = [];
  private pendingTasks: [string, TaskRegistration][] = [];

  constructor(private readonly options: KernelOptions = {}) {
    const {
      authorizer: _a,
      logger: _l,
      bwrapPath: _b,
      uploadHashWorker: _u,
      scratchRemover: _r,
      env,
      configFile,
      ...flags
    } = options;
    this.config = resolveConfig({
      flags: flags as Partial<Record<keyof KernelConfig, unknown>>,
      env: env ?? {},
      ...(configFile === undefined ? {} : { configFile }),
    });
    this.log = options.logger ?? createLogger(this.config.logLevel);
    const c = this.config;
    this.events = new EventBus({
      highWaterBytes: EVENT_HIGH_WATER_BYTES,
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
    if (this.services) this.services.compute.registerTask(name, reg);
    else this.pendingTasks.push([name, reg]);
  }

  private get started(): KernelServices {
    if (!this.services) throw new Error("kernel not started");
    return this.services;
  }

  get kernelId(): string {
    return this.services?.kernelId ?? "";
  }
  get socketPath(): string {
    return this.config.socket;
  }
  get adminIdentity(): string {
    return this.services?.adminIdentity ?? "";
  }
  /** File holding the admin persona's root token (0600). */
  get adminToken(): string {
    return this.services?.adminToken ?? "";
  }
  /** The token service (mint tokens for tests and embedders). */
  get tokens(): TokenService {
    return this.started.tokens;
  }
  get sessionCount(): number {
    return this.services?.sessions.sessionCount() ?? 0;
  }
  /** Frames being received by every session now: their bytes so far, and the memory held for them. */
  get partialFrames(): { received: number; retained: number } {
    return this.services?.sessions.partialFrames() ?? { received: 0, retained: 0 };
  }
  /** Bytes of answers queued to peers that have not read them (sessions with 64 KiB or more queued). */
  get queuedUnreadBytes(): number {
    return this.services?.sessions.queued.kernel() ?? 0;
  }

  /** Reads the open sessions' connections were held for, each a read that brought a frame no nearer past its frame's allowance (ReadGauge). */
  get readsHeld(): number {
    let n = 0;
    for (const s of this.services?.sessions.all() ?? []) n += s.reads.held;
    return n;
  }

  /** Bytes queued to every session's peer and not yet taken by it, whatever they are (answers, events) and however few. */
  get bufferedToPeersBytes(): number {
    let n = 0;
    for (const s of this.services?.sessions.all() ?? []) n += s.buffered;
    return n;
  }

  /** Bytes of /dev/shm the kernel's shared-memory segments hold now (bounded by maxShmBytes). */
  get sharedMemoryBytes(): number {
    return this.services?.shmBudget.bytes ?? 0;
  }

  /**
   * Why the kernel's storage failed, if it did: a sync of the database file, its WAL or an audit
   * segment that failed (a disk error; `/metrics` shows it as `kpip_storage_failed`). The kernel
   * then refuses every request; after stop(), end the process with a non-zero
   * `process.exit()`: after the database's failure a natural exit lets the SQLite addon close
   * the database, whose close would checkpoint and drop the WAL that still holds what the
   * failed sync may have lost; after a segment's, the operator must still learn that records
   * may be missing from the disk.
   */
  get storageFailure(): Error | undefined {
    return this.services?.store.failure;
  }

  /**
   * Why the kernel's storage is full, while it is (a write refused room: ENOSPC, EDQUOT,
   * SQLITE_FULL, and no record has committed since to end the condition): requests that must be
   * recorded or stored are refused RESOURCE meanwhile. After a stop, set when the stop's own
   * records could not be written: `kpip kernel` then exits 5.
   */
  get storageFull(): string | undefined {
    return this.services?.space.reason;
  }

  /** Half-open connections now (pre-authentication budget). */
  get handshakingCount(): number {
    return this.services?.sessions.handshakingCount() ?? 0;
  }
  /** Open TCP connections to the gRPC listener now (0 without one). */
  get grpcConnectionCount(): number {
    return this.listeners.grpc?.connectionCount ?? 0;
  }
  /** The kernel's records, read-only (audit chain, registry, agents, ops, object metadata). */
  get inspect(): KernelInspector {
    this.inspector ??= inspector(this.started.store);
    return this.inspector;
  }
  /** Large request bodies' memory: slabs made, bodies received into a kept slab, bytes kept now. */
  get bodyPool(): { made: number; reused: number; keptBytes: number } {
    const p = this.services?.host.bodies;
    return { made: p?.made ?? 0, reused: p?.reused ?? 0, keptBytes: p?.keptBytes ?? 0 };
  }
  /** Prometheus series (always counted; served when metricsListen is set). */
  get metrics(): KernelMetrics | undefined {
    return this.services?.metrics;
  }
  /** "host:port" the gRPC transport listens on, when configured. */
  get grpcAddress(): string | undefined {
    return this.services?.addresses.grpc;
  }
  /** Where /metrics is served, when it is. */
  get metricsAddress(): string {
    return this.services?.addresses.metrics ?? "";
  }

  async start(): Promise<void> {
    if (this.state !== "new") throw new Error(`kernel cannot start from state ${this.state}`);
    this.state = "starting";
    const c = this.config;
    try {
      // Before anything is opened (home, store, sandbox, listeners): a kernel whose bounds do
      // not fit its descriptors is refused with nothing to close.
      checkDescriptorBudget(c);
      // The request path optimized within its first ~1,000 requests, not a few thousand (v8-tiering.ts).
      tuneTiering();
      // The codec sees a heartbeat's shapes before it is optimized, not seconds into a session (warm-frames.ts).
      // Only a speed-up: should it fail, the kernel starts anyway (warm-frames.test.ts runs it).
      try {
        warmFramePath();
      } catch (err) {
        this.log.warn({ err }, "frame path warm-up failed; the codec warms on traffic");
      }
      const s = await compose({
        config: c,
        log: this.log,
        events: this.events,
        router: this.router,
        families: this.pendingFamilies,
        tasks: this.pendingTasks,
        authorizer: this.options.authorizer,
        clock: this.options.clock,
        bwrapPath: this.options.bwrapPath,
        uploadHashWorker: this.options.uploadHashWorker,
        scratchRemover: this.options.scratchRemover,
        configFile: this.options.configFile,
      });
      this.services = s;
      this.pendingFamilies = [];
      this.pendingTasks = [];
      const { grpc } = await openListeners(
        c,
        (conn) => this.accept(conn),
        s.host.peerLog,
        this.log,
        this.listeners,
        (bound) => s.metrics.grpcConnectionsRefused.inc({ bound }),
        () => s.metrics.grpcConnectionsShed.inc(),
        (reason, count) => s.metrics.grpcStreamsRefused.inc({ reason }, count),
        (reason) => s.metrics.grpcConnectionsClosed.inc({ reason }),
      );
      s.addresses.grpc = grpc?.address;
      if (c.metricsListen) s.addresses.metrics = await s.metrics.listen(c.metricsListen);
      this.housekeeping = startHousekeeping(s, c, this.log, this.events);
      this.state = "running";
      s.sessions.open(s.host);
      this.log.info({ kernel: s.kernelId, socket: c.socket, grpc: grpc?.address, home: c.home }, "kernel listening");
    } catch (e) {
      this.state = "stopped";
      await this.listeners.uds?.close();
      await this.listeners.grpc?.close(0);
      // A failed compose closed what it opened; after it, what it built is closed here.
      await this.services?.sandbox.close(!c.sandboxScratch);
      await this.services?.closeStorage();
      throw e;
    }
  }

  /** What `system.status` and `kpip status` show: the operator's view, or (for another persona) its own. */
  status(persona = this.config.adminPersona): CborMap {
    return this.started.status(persona);
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

  /** Accepts a connection from any transport (refused unless the kernel runs). */
  accept(conn: Connection): void {
    if (this.state !== "running" || !this.services) conn.destroy();
    else this.services.sessions.accept(conn);
  }

  /**
   * Stops accepting, answers in-flight requests, says GOODBYE, flushes the audit log, removes the
   * socket. `reason` goes on the kernel.stop record (the CLI passes the signal's name).
   */
  async stop(reason = "stop()"): Promise<void> {
    const s = this.services;
    if (this.state !== "running" || !s) return;
    this.state = "stopping";
    s.sessions.close();
    this.housekeeping?.stop();
    await this.listeners.uds?.close();
    // gRPC stops taking new streams now and finishes once the sessions below have ended theirs.
    const grpcClosed = this.listeners.grpc?.close(this.config.drainTimeoutMs + GRPC_CLOSE_GRACE_MS);
    const sessions = s.sessions.all();
    const drains = sessions.map((x) => x.drain());
    const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), this.config.drainTimeoutMs).unref());
    if ((await Promise.race([Promise.all(drains), timeout])) === "timeout") {
      this.log.warn({ sessions: s.sessions.sessionCount() }, "drain timed out: closing remaining sessions");
    }
    // Requests that outlasted the drain are abandoned with their sessions: none commits an effect from now on.
    s.pipeline.stopEffects();
    for (const x of s.sessions.all()) x.kill();
    await grpcClosed;
    await s.compute.stop();
    await s.agents.stop();
    // Uploads in progress end with the run, on the record before kernel.stop (a kill's are recorded by the next start).
    s.uploads.endAll();
    // What a full disk kept back since the last tick (the kernel's revocations, agents' ends and
    // keys), stored now if there is room, as compute.stop does ops': a revocation held only in
    // memory is gone at the next start, and an ended agent's token — its key removed, its row
    // stored — would then be valid for the next agent of its name.
    storeKept(s, this.log);
    if (s.tokens.unstoredCount > 0)
      this.log.error(
        { revocations: s.tokens.unstoredCount },
        "revocations the kernel made could not be stored (its storage is full): their agents' ends are not stored either, so the next start finds them running and revokes their tokens again",
      );
    await s.sandbox.close(!this.config.sandboxScratch);
    await s.metrics.close();
    // Let handlers observe the abort and their outcome records land.
    await new Promise((r) => setImmediate(r));
    // Records that found no room (effects' outcomes, the kernel's own acts): written now if there
    // is room; else no kernel.stop record when an effect's outcome is missing, so that the next
    // start recovers it as after a kill (the kernel's acts cannot be recovered: counted in the log).
    await recordLateRecords(s.space, s.audit);
    const unwritten = s.space.lateDropped + s.space.lateCount;
    if (s.space.outcomesMissing)
      this.log.error(
        { missing: unwritten },
        "records of committed effects could not be written: no kernel.stop record, so the next start writes their outcomes",
      );
    else {
      if (unwritten > 0)
        this.log.error({ missing: unwritten }, "records of the kernel's own acts could not be written (its storage was full)");
      s.records.record({
        op: "kernel.stop",
        target: "kernel://",
        detail: { ...s.runDetail(), reason, ...(unwritten > 0 ? { unrecorded: unwritten } : {}) },
      });
    }
    await s.closeStorage();
    // Segments kept for a grace period after their session (a body not yet taken) would outlive
    // a kernel that exits first: their timers do not hold the process. Every session has ended.
    sweepShmSegments(s.kernelId);
    this.state = "stopped";
    this.log.info({ kernel: s.kernelId }, "kernel stopped");
  }
}
