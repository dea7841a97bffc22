import { join } from "node:path";
import type { CborMap, Grant } from "@kpip/protocol";
import { AgentManager } from "../agents/manager.js";
import { HandshakeRecordLimiter } from "../audit/handshake-limit.js";
import { configDigest, KernelRecords } from "../audit/kernel-records.js";
import { LiveSessions, recoverSessions, SessionRecoveryError, settleLiveSessions } from "../audit/live-sessions.js";
import type { AuditLog } from "../audit/log.js";
import { OutcomeRecoveryError, recoverOutcomes } from "../audit/recover-outcomes.js";
import { RefusalLimiter } from "../audit/refusals.js";
import { suppressedHandshakesRecord } from "../audit/suppressed-records.js";
import type { Authorizer } from "../auth/authorizer.js";
import { capabilities } from "../auth/capabilities.js";
import type { CapEnforcer } from "../auth/enforcer.js";
import { RootKeys } from "../auth/keys.js";
import type { TokenService } from "../auth/tokens.js";
import { ComputeEngine, type TaskRegistration } from "../compute/engine.js";
import type { KernelConfig } from "../config.js";
import type { EventBus } from "../events/bus.js";
import { ensureAdminToken, HOME_FILES } from "../home.js";
import { answerRoom } from "../limits.js";
import type { Logger } from "../log.js";
import { KernelMetrics } from "../metrics/metrics.js";
import { Admission } from "../pipeline/admission.js";
import { AnswerBudget } from "../pipeline/answer-budget.js";
import { DedupeCache } from "../pipeline/dedupe.js";
import { Pipeline } from "../pipeline/pipeline.js";
import { agentFamily } from "../primitives/agent.js";
import { computeFamily } from "../primitives/compute.js";
import { eventFamily } from "../primitives/event.js";
import { personaFamily } from "../primitives/persona.js";
import { resourceFamily } from "../primitives/resource.js";
import type { Router } from "../primitives/router.js";
import { SeqCursors } from "../primitives/seq-cursor.js";
import { storageFamily } from "../primitives/storage.js";
import { UploadTable } from "../primitives/storage-uploads.js";
import { systemFamily } from "../primitives/system.js";
import { tokenFamily } from "../primitives/token.js";
import type { PrimitiveFamily } from "../primitives/types.js";
import { UploadHasher } from "../primitives/upload-hasher.js";
import { ResourceLedger } from "../resources/ledger.js";
import { GrantBounds, PersonaRoots } from "../resources/lineage.js";
import { ProcessTable } from "../sandbox/processes.js";
import type { Sandbox } from "../sandbox/sandbox.js";
import { openSandbox, sandboxInfo, sandboxSecrets, sandboxSummary } from "../sandbox/setup.js";
import { singleLinks } from "../sandbox/view.js";
import { BodyPool } from "../session/body-pool.js";
import { PeerLogLimiter } from "../session/log-limit.js";
import { SessionOpenRate } from "../session/open-rate.js";
import { PersonaKeys } from "../session/persona-keys.js";
import type { SessionHost } from "../session/session.js";
import { ShmBudget } from "../session/shm-budget.js";
import { BlobStore } from "../store/blobs.js";
import type { WalCheckpointer } from "../store/checkpointer.js";
import { DamagedBodies } from "../store/damaged-bodies.js";
import type { SqliteStore } from "../store/sqlite.js";
import { KeptBytes, RepeatedFailureLog } from "../store/storage-full.js";
import { loadShmNative, sweepShmSegments } from "../transport/shm-native.js";
import { KERNEL_VERSION } from "../version.js";
import { applyOfflineChanges, type ExpulsionScope, endUnregisteredSessions, expelUnregistered } from "./expulsion.js";
import { notifyRetired, notifyRevoked } from "./revocation.js";
import { SessionRegistry } from "./sessions.js";
import { type Addresses, kernelStatus } from "./status.js";
import { openHome } from "./storage.js";
import type { StorageSpace } from "./storage-space.js";

/** What the composition is given: the settings, and what the embedder set up before start. */
export interface CompositionInput {
  readonly config: KernelConfig;
  readonly log: Logger;
  readonly events: EventBus;
  readonly router: Router;
  /** The embedder's families, registered after the built-ins. */
  readonly families: readonly PrimitiveFamily[];
  readonly tasks: readonly [string, TaskRegistration][];
  readonly authorizer?: Authorizer | undefined;
  readonly clock?: (() => number) | undefined;
  readonly bwrapPath?: string | undefined;
  readonly uploadHashWorker?: URL | undefined;
  readonly scratchRemover?: ((paths: string[]) => Promise<string | undefined>) | undefined;
  /** The config file named at start (not the home's own): hidden from sandboxes like the home. */
  readonly configFile?: string | undefined;
}

/** Every service of a started kernel, built and wired by {@link compose}. */
export interface KernelServices {
  readonly kernelId: string;
  readonly startedAt: number;
  readonly adminIdentity: string;
  readonly adminToken: string;
  readonly store: SqliteStore;
  /** Object bodies above the inline size; the housekeeping tick removes those released since the last. */
  readonly blobs: BlobStore;
  /** Chunked uploads in progress (the housekeeping tick fails them when the disk stays full). */
  readonly uploads: UploadTable;
  /** The WAL worker (tests stop it to see the fallback). */
  readonly checkpointer: WalCheckpointer;
  readonly audit: AuditLog;
  /** Whether the home's file system has room, as the kernel's writes find it. */
  readonly space: StorageSpace;
  readonly records: KernelRecords;
  readonly enforcer: CapEnforcer;
  readonly tokens: TokenService;
  readonly compute: ComputeEngine;
  readonly agents: AgentManager;
  readonly sandbox: Sandbox;
  readonly processes: ProcessTable;
  readonly dedupe: DedupeCache;
  readonly metrics: KernelMetrics;
  readonly pipeline: Pipeline;
  readonly sessions: SessionRegistry;
  /** The memory the kernel's shared-memory segments hold, per persona tree and in all. */
  readonly shmBudget: ShmBudget;
  /** What every session is served by (the registry serves it once the kernel runs). */
  readonly host: SessionHost;
  /** Filled in as the listeners come up. */
  readonly addresses: Addresses;
  status(persona: string): CborMap;
  /** Audits and applies registry changes made without the kernel (housekeeping). */
  applyOfflineChanges(): void;
  /** What kernel.start and kernel.stop records say about this run. */
  runDetail(): { version: string; configDigest: string; sandbox: string };
  /** Closes storage in order: pending refusal summaries, uploads, audit log, anchors, WAL worker, store, home lock. */
  closeStorage(): Promise<void>;
}

/**
 * The composition root: opens the home and builds every service of the kernel, in dependency
 * order, wiring each to what it needs; the kernel.start record and recovery are on the record
 * before it returns. Nothing listens yet. On failure, what was opened is closed again.
 */
export async function compose(input: CompositionInput): Promise<KernelServices> {
  const { config: c, log, events, router } = input;
  let metricsRef: KernelMetrics | undefined;
  // Before the kernel opens (and writes to) its database and keys: a secret with another name is refused (view.ts).
  if (c.sandbox === "bwrap") singleLinks(sandboxSecrets(c, input.configFile));
  const home = await openHome(c, log, {
    anchorFailed: () => metricsRef?.auditAnchorFailures.inc(),
    indexFailed: () => metricsRef?.auditIndexFailures.inc(),
  });
  const { store, audit, kernelId } = home;
  const cursors = new SeqCursors(home.cursorKey);
  let sandbox: Sandbox | undefined;
  let uploads: UploadTable | undefined;
  let blobsRef: BlobStore | undefined;
  let pipelineRef: Pipeline | undefined;
  let handshakesRef: HandshakeRecordLimiter | undefined;
  const closeStorage = async () => {
    pipelineRef?.flushSuppressed();
    for (const x of handshakesRef?.take() ?? []) audit.append(suppressedHandshakesRecord(x)).catch(() => {});
    uploads?.close();
    // The bodies released since the last tick (the uploads just dropped too), while the store is open.
    releaseBodies(blobsRef, log);
    await home.close();
  };
  try {
    const startedAt = Date.now();
    const now = input.clock ?? Date.now;
    events.operator = c.adminPersona;
    // Subscriptions live as long as the capabilities that authorized them (the enforcer is built below).
    let enforcerRef: CapEnforcer | undefined;
    // The sessions (made below), for the notice of a key's retirement.
    let sessionsRef: Pick<SessionRegistry, "all"> | undefined;
    events.lapsed = (g: Grant) => enforcerRef?.lapsed(g);
    sandbox = openSandbox(c, log, input.bwrapPath, input.configFile, input.scratchRemover);
    const box = sandbox;
    const runDetail = () => ({ version: KERNEL_VERSION, configDigest: configDigest(c), sandbox: box.mode });
    const records = new KernelRecords(audit, home.space);
    // The token root keys: a change the kernel meets while it runs (a rotation, a retirement, a
    // file replaced or damaged by someone with the home) is on the record, not only in the log.
    const rootKeys = new RootKeys(
      c.home,
      input.clock,
      (e) => {
        log.error({ err: e.name }, `${e.message}: no token verifies and none is minted until it is mended`);
        records.record({
          op: "token.keys",
          target: "kernel://",
          message: `${e.message}: no token verifies and none is minted until it is mended`,
          detail: { damaged: true },
        });
      },
      (change) => {
        log.warn({ ...change }, "the token root keys changed");
        records.record({
          op: "token.keys",
          target: "kernel://",
          message: `the token root keys changed: current ${change.current}`,
          detail: { ...change },
        });
        // Sessions holding handles on tokens the retired (or removed) keys signed are told, as at a
        // revocation: on a later turn, as this is found on a request's check of a key.
        const ended = new Set([...change.retired, ...change.removed]);
        if (ended.size > 0)
          setImmediate(() => {
            const enforcer = enforcerRef;
            if (enforcer) notifyRetired(sessionsRef?.all() ?? [], ended, (g) => enforcer.kidOf(g), events);
          });
      },
    );
    const last = home.lastRecord;
    const lost = home.lostTail;
    // Before anything is appended: what the sessions' rows noted past the log's end never committed.
    settleLiveSessions(store, last?.seq ?? 0);
    records.record({
      op: "kernel.start",
      target: "kernel://",
      // A cut of the newest segment is on the chain here, or nowhere: the chain after it agrees with itself.
      message: lost
        ? `${sandboxSummary(sandbox)}; audit records ${lost.from}..${lost.to} (${lost.records}) and ${lost.checkpoints} signed checkpoints the index named are gone: the newest segment ends before them (an OS crash before its sync, or a cut)`
        : sandboxSummary(sandbox),
      detail: {
        ...runDetail(),
        reason: last && last.op !== "kernel.stop" ? "the previous run ended without kernel.stop (killed or crashed)" : "start",
        keys: rootKeys.summary(),
        ...(lost ? { lost: { ...lost } } : {}),
      },
    });
    // Committed before start() returns, like everything else the start puts on the record.
    audit.flush();
    // A kill between an effect's commit and its outcome record left the effect off the record.
    if (last && last.op !== "kernel.stop") {
      const { recorded, failed } = await recoverOutcomes(store, audit, last.seq);
      if (recorded)
        log.warn({ requests: recorded }, "effects the previous run committed without an outcome record are now on the record");
      if (failed)
        throw new OutcomeRecoveryError(
          `the outcome records of ${failed} effects the previous run committed could not be committed (the audit log refused the commit): the kernel does not start; the next start tries again`,
        );
    }
    // Sessions live in memory: those a killed run left open get their end on the record now.
    const ended = await recoverSessions(
      store,
      audit,
      last ? { seq: last.seq, time: last.time, stopped: last.op === "kernel.stop" } : undefined,
    );
    if (ended.recorded) log.warn({ sessions: ended.recorded }, "sessions the previous run left open are now ended on the record");
    if (ended.failed)
      throw new SessionRecoveryError(
        `the ends of ${ended.failed} sessions the previous run left open could not be committed (the audit log refused the commit): the kernel does not start; the next start tries again`,
      );
    const liveSessions = new LiveSessions(store, audit);
    // The limits the tokens a grant was minted from hold over its requests (agents', sub-personas'),
    // read with the grant's rate family by the enforcer: one read of its token row per grant.
    const bounds = new GrantBounds(store);
    // The top of each persona's tree, for every kernel-wide per-persona bound: from the registry
    // (who registered whom), cached per persona; registry changes clear it.
    const roots = new PersonaRoots((id) => store.registrarOf(id), c.adminPersona);
    store.onRegistryChange((id) => roots.changed(id));
    events.useRoots(roots);
    // The room for records kept while the disk is full is shared by tree (StorageSpace.keep).
    home.space.useRoots(roots);
    // What ended ops' results and agents' output kept for room may hold, shared (per tree, in all).
    const keptBytes = new KeptBytes(c.maxKeptOutputBytes);
    const processes = new ProcessTable(
      { max: c.maxProcesses, perPersona: c.maxProcessesPerPersona, admin: c.adminPersona, adminReserve: c.adminReserve },
      bounds,
      roots,
    );
    const admission = new Admission(c);
    const opens = new SessionOpenRate({ rate: c.sessionOpenPersonaRate, adminPersona: c.adminPersona }, input.clock);
    const sessions = new SessionRegistry(
      {
        perTransport: c.preauthPerTransport,
        perPeer: c.preauthPerPeer,
        // PONGs, small answers and events, which no read refusal bounds, stop here.
        treeQueuedHardBytes: c.maxQueuedBytesPerPersona + c.maxWriteBuffer,
      },
      (persona, attested, tree, root, transport) => {
        const full = admission.session(persona, attested, tree, root);
        if (full !== undefined) return { code: "TOO_MANY_SESSIONS", message: full.message };
        // An agent's one connection is the kernel's, made at its spawn (bounded by the process
        // table) and never made again: refused, the agent could not connect at all.
        if (transport === "agent") return undefined;
        // Last: only a session that opens takes a token of its tree's rate.
        const fast = opens.take(persona, root);
        return fast === undefined ? undefined : { code: "SESSION_RATE_LIMITED", message: fast };
      },
      {
        shed: () => metricsRef?.handshakesShed.inc(),
        ended: (s) => {
          events.dropSink(s.id);
          events.roomIn(s.persona);
          pipelineRef?.sessionEnded(s.id);
        },
      },
      roots,
    );
    sessionsRef = sessions;
    const addresses: Addresses = { grpc: undefined, metrics: "" };
    router.register(
      systemFamily(
        {
          kernelId,
          version: KERNEL_VERSION,
          startedAt,
          // The operator counts every session; a persona its own tree's, as system.status lists them.
          sessions: (persona) => (persona === c.adminPersona ? sessions.sessionCount() : sessions.sessionCountWithin(persona)),
          // Defined below, over services built after this family; asked only once the kernel serves.
          status: (persona) => status(persona),
          sandbox: () => sandboxInfo(box),
          degraded: () => {
            const failed = store.failure;
            if (failed)
              return `the kernel's storage failed (${failed.message}): every change is refused; restart once the disk is mended`;
            return home.space.reason;
          },
        },
        router,
      ),
    );
    const ledger = new ResourceLedger(store, { workspaceStorageBytes: c.workspaceStorageBytes }, input.clock, bounds);
    // Object bodies above the inline size live in <home>/objects; what a crash left unnamed goes now.
    const blobs = new BlobStore(join(c.home, "objects"), {
      sync: true,
      // Once the store has failed a sync may pass with the WAL's pages lost (a writeback error is
      // told once): no body is removed then; the next start's sweep looks again.
      durable: () => {
        if (store.failure) throw store.failure;
        store.syncWal();
      },
      named: (h) => store.countBodyRefs(h),
      endedNotes: {
        mark: (id) => store.markEndedUploadNote(id),
        unmark: (id) => store.unmarkEndedUploadNote(id),
        marked: () => store.endedUploadNotes(),
        clear: () => store.clearEndedUploadNotes(),
      },
    });
    blobsRef = blobs;
    // Uploads the previous kernel was killed with: their partial files are gone with this start, and
    // nothing else would end them on the record (an upload lives in memory only). A partial file
    // with no note is an ended upload's (on the record already) that a failing disk kept: logged only.
    if (blobs.refusedAtStart)
      log.warn(
        { files: blobs.refusedAtStart },
        "the file system refused to remove files a run left (partial files, upload notes): left; notes are tried again, the rest at the next start",
      );
    if (blobs.endedUploadFiles)
      log.info({ files: blobs.endedUploadFiles }, "removed partial files of uploads already ended (their removal had failed)");
    // After a clean stop (its last record kernel.stop), a live upload left was one whose commit ran
    // at the stop (the stop ends every other) and did not complete: no kill to speak of.
    const stopped = last?.op === "kernel.stop";
    for (const u of blobs.leftUploads) {
      // Its partial file already gone (its body installed — a body no row names, which the start's
      // sweep removes — or its bytes read into memory for an inline commit).
      const left = u.committing ? "what it left is removed at this start" : "this start removed its partial file";
      records.uploadEnded(
        { ...u, received: u.bytes },
        stopped ? "kernel stopped" : "kernel killed",
        stopped
          ? `the kernel stopped while it was being committed, and the commit did not complete: ${left}`
          : u.committing
            ? `the kernel was killed while it was in progress, its bytes received and its commit not completed: ${left}`
            : `the kernel was killed while it was in progress: ${left}`,
      );
    }
    // A flush the batch bound started outside a tick: a failed WAL sync (the store has failed and
    // says so itself); its bodies stay on disk, unnamed, for the next start's sweep.
    blobs.onFlushError = (e) => log.warn({ err: e }, "removing released object bodies failed; the next start removes them");
    // Bodies missing or of another size than their rows say are reported (logged, recorded) now, and at a read that meets one.
    const damaged = new DamagedBodies(store, records, log);
    const swept = damaged.sweep(blobs).removed;
    if (swept) log.info({ bodies: swept }, "removed object bodies no object names (left by an interrupted write)");
    uploads = new UploadTable(
      blobs,
      {
        perPersona: c.maxUploadsPerPersona,
        total: c.maxUploads,
        totalBytes: c.maxUploadBytes,
        bytesPerPersona: c.maxUploadBytesPerPersona,
        idleMs: c.uploadIdleMs,
        admin: c.adminPersona,
        adminReserve: c.adminReserve,
        roots,
      },
      Date.now,
      new UploadHasher({ module: input.uploadHashWorker, log }),
      now,
    );
    // An upload its persona neither committed nor aborted ends on the record too: who, which, why.
    uploads.onEnded = (u, why) =>
      records.uploadEnded(
        { id: u.id, target: u.target, persona: u.persona, received: u.received, size: u.size },
        why,
        why !== "kernel stopped"
          ? undefined
          : u.installed || u.inline
            ? // Its bytes had left the partial file: a commit refused before (kept for a retry) or by the stop (case 654).
              "the kernel stopped with every byte of it received and its commit refused: what it held was removed"
            : "the kernel stopped while it was in progress: its partial file was removed",
      );
    // Log lines a peer's requests cause, each key within its budget (the storage ops' clean-up too).
    const peerLog = new PeerLogLimiter(log, { lines: c.peerLogLines, windowMs: c.peerLogWindowMs });
    router.register(
      storageFamily(
        { store, blobs, ledger, uploads, peerLog, damaged, watch: { bus: events, sinkOf: (id) => sessions.get(id) } },
        {
          maxObjectBytes: c.maxObjectBytes,
          inlineBytes: c.objectInlineBytes,
          // A body this large may leave its intent past what the record keeps (the rest of an
          // intent, its target and context, is under 8 KiB): its hash goes on the outcome record.
          recordHashFrom: Math.max(0, c.auditIntentMaxBytes - 8192),
          // A read's answer is one frame: its bytes plus the envelope.
          maxReadBytes: answerRoom(c.maxBodyBytes),
        },
      ),
    );
    router.register(
      resourceFamily(
        ledger,
        { workspaceStorageBytes: c.workspaceStorageBytes },
        { store, max: c.maxAllocationsPerPersona, roots, admin: c.adminPersona },
      ),
    );
    const { enforcer, tokens } = capabilities(
      rootKeys,
      store,
      input.clock,
      {
        maxTokenBytes: c.maxTokenBytes,
        maxLiveTokens: c.maxLiveTokens,
        exempt: ["kernel", c.adminPersona],
      },
      bounds,
      roots,
    );
    enforcerRef = enforcer;
    tokens.pruneExpired(now() - c.tokenRetentionMs);
    enforcer.onDerived = (t, g, persona, session) => records.derived(t, g, persona, session);
    const admin = ensureAdminToken(c.home, store, tokens, c.adminPersona, now());
    const adminToken = admin.path;
    if (admin.minted !== undefined && admin.older?.length) {
      // A renewal (the file was deleted): the earlier root tokens still act until revoked.
      const older = admin.older;
      const message = `a new admin root token was minted (${HOME_FILES.adminToken} was missing); ${older.length} earlier root token(s) stay valid until revoked: kpip token revoke <id>`;
      records.record({
        op: "kernel.admin-token",
        target: `persona://${c.adminPersona}`,
        persona: c.adminPersona,
        message,
        detail: { token: admin.minted, older: older.slice(0, 16), olderCount: older.length },
      });
      log.warn({ token: admin.minted, older: older.slice(0, 16) }, message);
    }
    // The fan-out reaches the agents and ops started under a revoked capability too (both made
    // below; it runs only once the kernel serves).
    const revoked = () =>
      notifyRevoked(sessions.all(), (g) => tokens.isRevoked(g), events, { agents, compute, uploads }, tokens.takeRevoked());
    router.register(tokenFamily(enforcer, tokens, store, revoked, c.adminPersona, cursors));
    const compute = new ComputeEngine(
      store,
      events,
      {
        workers: c.computeWorkers,
        idleWorkers: c.computeIdleWorkers,
        idleWorkerMs: c.computeIdleWorkerMs,
        workerHeapMb: c.computeWorkerHeapMb,
        resultTtlMs: c.opResultTtlMs,
        maxFinishedPerPersona: c.maxFinishedOpsPerPersona,
        resultGraceMs: c.opResultGraceMs,
        maxOutputBytes: c.maxOutputBytes,
        maxRuntimeMs: c.maxRuntimeMs,
        maxPendingPerPersona: c.maxPendingOpsPerPersona,
        maxPending: c.maxPendingOps,
        maxTaskInputBytes: c.maxTaskInputBytes,
        maxQueuedTaskInputBytes: c.maxQueuedTaskInputBytes,
        maxQueuedTaskInputBytesPerPersona: c.maxQueuedTaskInputBytesPerPersona,
        admin: c.adminPersona,
        adminReserve: c.adminReserve,
        roots,
        keptBytes,
      },
      log,
      {
        sandbox,
        processes,
        hold: (persona) => ledger.hold(persona),
        recordState: (op, state, from, written, recovered, outlived) =>
          records.opState(op, state, from, written, recovered, outlived),
        storageFull: (e) => home.space.failed(e),
        tokenClock: now,
      },
    );
    for (const [name, reg] of input.tasks) compute.registerTask(name, reg);
    const interrupted = compute.recover(last !== undefined && last.op !== "kernel.stop");
    if (interrupted.length)
      log.warn({ ops: interrupted.length }, "ops interrupted by the previous stop were marked FAILED/INTERNAL");
    // Ops are scoped to the agent spawn that submitted them (agents, made below, say which).
    router.register(computeFamily(compute, store, c.adminPersona, cursors, (p) => agents.spawnOf(p)));
    let expelForgotten: (() => void) | undefined;
    const agents = new AgentManager(
      store,
      tokens,
      events,
      {
        maxOutputBytes: c.maxOutputBytes,
        maxRuntimeMs: c.maxRuntimeMs,
        maxAgents: c.maxAgents,
        maxAgentsPerPersona: c.maxAgentsPerPersona,
        adminPersona: c.adminPersona,
        adminReserve: c.adminReserve,
        maxEndedAgentsPerPersona: c.maxEndedAgentsPerPersona,
        roots,
        keptBytes,
        sandbox,
        processes,
        accept: (conn) => sessions.accept(conn),
        record: (act, written, lost) => records.record(act, written, lost),
        storageFull: (e) => home.space.failed(e),
        // What the agent started under its token ends with it (revocation.ts).
        onRevoked: () => revoked(),
        // As a removed persona's (expulsion.ts): its sessions end, whoever holds them, and what it
        // started under a token that is not its own (its spawner's, handed to it) ends too — its
        // processes, ops and uploads. Sessions alone during recovery, before the expulsion is made.
        onForgotten: () =>
          expelForgotten
            ? expelForgotten()
            : endUnregisteredSessions({ registry: agents.registry, sessions: () => sessions.all() }),
      },
      log,
    );
    agents.recover(last !== undefined && last.op !== "kernel.stop");
    // What recovery put on the record (ops interrupted, agents lost) is committed before start() returns.
    audit.flush();
    router.register(agentFamily(agents, c.adminPersona, cursors));
    const expulsion: ExpulsionScope = {
      // An ended agent's key a full disk kept in the registry is gone all the same.
      registry: agents.registry,
      sessions: () => sessions.all(),
      agents,
      processes,
      compute,
      uploads,
      log,
      notifyRevoked: revoked,
    };
    expelForgotten = () => void expelUnregistered(expulsion);
    router.register(
      personaFamily(store, {
        admin: c.adminPersona,
        revokeTokens: (ids, by) => tokens.revokeAll(ids, by),
        registryChanged: () => expelUnregistered(expulsion),
        maxRegistered: c.maxRegisteredPersonas,
        roots,
      }),
    );
    router.register(eventFamily(events, (id) => sessions.get(id)));
    for (const f of input.families) router.register(f);
    const dedupe = new DedupeCache(c.dedupeWindowMs, store, c.dedupeMaxEntries, undefined, undefined, c.adminPersona);
    const shmBudget = new ShmBudget({ total: c.maxShmBytes, perTree: c.maxShmBytesPerPersona });
    const metrics = new KernelMetrics({
      sessions: () => sessions.byTransport(),
      inFlight: () => sessions.inFlight(),
      deferred: () => ({ running: compute.runningCount, queued: compute.queuedCount }),
      eventDrops: () => events.dropped,
      agents: () => agents.runningCount,
      usage: () => store.allUsage(),
      usageIds: c.metricsPersonaLabels === 1,
      walBackground: () => home.checkpointer.background,
      storageFailed: () => home.store.failure !== undefined,
      storageFull: () => home.space.full,
      keptForRoom: () => home.space.lateCount + compute.keptCount + agents.keptCount + tokens.unstoredCount,
      auditUnindexed: () => store.auditUnindexed,
      shmBytes: () => shmBudget.bytes,
    });
    metricsRef = metrics;
    compute.onIdleEnded = (reason) => metrics.taskWorkersEnded.inc({ reason });
    home.checkpointer.onTopUp = (seconds) => {
      metrics.walTopUps.inc();
      metrics.walTopUpSeconds.inc(seconds);
    };
    audit.onCommit = (n, seconds, walBytes) => {
      metrics.auditBatch.observe(n);
      metrics.auditCommitSeconds.observe(seconds);
      // The WAL stays bounded however late the checkpoint worker runs on a busy machine.
      home.checkpointer.committed(walBytes);
    };
    const refusals = new RefusalLimiter(
      {
        sessionRate: c.auditRefusalRate,
        personaRate: c.auditRefusalPersonaRate,
        floodMax: c.auditRefusalFloodMax,
        intentMaxBytes: c.auditRefusalIntentMaxBytes,
      },
      input.clock,
      roots,
    );
    const bodies = new BodyPool(c.bodyPoolBytes);
    const answers = AnswerBudget.forWriteBuffer(c.maxWriteBuffer, {
      totals: sessions.queued,
      perTree: c.maxQueuedBytesPerPersona,
      kernel: c.maxQueuedBytes,
    });
    const pipeline = new Pipeline({
      ledger,
      router,
      authorizer: input.authorizer ?? enforcer,
      // Revocation and expiry are the token store's facts: re-checked by the enforcer whatever decided.
      lapsed: (g, what) => enforcer.lapsed(g, what),
      audit,
      dedupe,
      log,
      metrics,
      refusals,
      answers,
      admission,
      bodies,
      peerLog,
      space: home.space,
      revocationRecorded: (ids, seq) => {
        for (const id of ids) tokens.noteRevokeRecord(id, seq);
      },
    });
    pipelineRef = pipeline;
    const handshakeRecords = new HandshakeRecordLimiter({
      transportRate: c.auditHandshakeRate,
      peerRate: c.auditHandshakePeerRate,
    });
    handshakesRef = handshakeRecords;
    const host: SessionHost = {
      kernelId,
      limits: {
        heartbeatMs: c.heartbeatMs,
        handshakeTimeoutMs: c.handshakeTimeoutMs,
        maxInFlight: c.maxInFlight,
        maxBodyBytes: c.maxBodyBytes,
        dedupeWindowMs: c.dedupeWindowMs,
        maxWriteBuffer: c.maxWriteBuffer,
        readHoldMs: c.readHoldMs,
        controlFrameRate: c.controlFrameRate,
      },
      pipeline,
      audit,
      space: home.space,
      liveSessions,
      personaKeys: new PersonaKeys(
        agents.registry,
        () => store.journalStamp(),
        (changed, lost) => store.watchJournalStamp(changed, lost),
      ),
      bindToken: (table, persona, token, session) => enforcer.bind(table, persona, token, session),
      log,
      handshakeRecords,
      handshakeFailed: (transport, code) => metricsRef?.handshakesFailed.inc({ transport, code }),
      peerLog,
      admitSession: (s, persona) => sessions.admit(s, persona),
      agentSpawn: (persona) => agents.spawnRecord(persona),
      sessionClosed: (s) => sessions.closed(s),
      sessionDrained: (s) => {
        sessions.queuedTo(s);
        events.drained(s.id);
        events.roomIn(s.persona);
      },
      sessionQueued: (s) => sessions.queuedTo(s),
      // The answers' bounds on unread bytes (maxQueuedBytesPerPersona, maxQueuedBytes) hold events too.
      eventRoom: (s, bytes) => answers.queuedRoom(s.id, bytes) === undefined,
      shm: sharedMemory(c, kernelId, log, sessions, shmBudget),
      bodies,
    };
    const status = (persona: string) =>
      kernelStatus(
        {
          config: c,
          kernelId,
          startedAt,
          addresses,
          sessions: () => sessions.all(),
          store,
          audit,
          compute,
          agents,
          sandbox: box,
          processes,
          events,
        },
        persona,
      );
    const offlineFailures = new RepeatedFailureLog(
      (f, m) => log.error(f, m),
      "could not apply administrative changes made without the kernel; retrying on the next tick",
    );
    return {
      kernelId,
      startedAt,
      adminIdentity: home.adminIdentity,
      adminToken,
      store,
      blobs,
      uploads,
      checkpointer: home.checkpointer,
      audit,
      space: home.space,
      records,
      enforcer,
      tokens,
      compute,
      agents,
      sandbox,
      processes,
      dedupe,
      metrics,
      pipeline,
      sessions,
      shmBudget,
      host,
      addresses,
      status,
      applyOfflineChanges: () =>
        applyOfflineChanges({
          ...expulsion,
          audit,
          reloadRevocations: () => tokens.reloadRevocations(),
          registryChangedElsewhere: () => store.registryChangedElsewhere(),
          failures: offlineFailures,
        }),
      runDetail,
      closeStorage,
    };
  } catch (e) {
    await sandbox?.close(!c.sandboxScratch);
    await closeStorage();
    throw e;
  }
}

/** Shared memory for bulk bodies: swept of a crashed run's segments; said once when unavailable. */
function sharedMemory(
  c: KernelConfig,
  kernelId: string,
  log: Logger,
  sessions: SessionRegistry,
  budget: ShmBudget,
): SessionHost["shm"] {
  if (c.shmThreshold === 0) return undefined;
  const { native, reason } = loadShmNative();
  if (!native) {
    log.warn({ reason }, "shared memory unavailable: large bodies go inline on every session");
    return undefined;
  }
  const swept = sweepShmSegments(kernelId);
  if (swept > 0) log.info({ swept }, "removed shared-memory segments left by an earlier run");
  return {
    native,
    threshold: c.shmThreshold,
    grow: (s, bytes) => {
      const tree = sessions.treeOfSession(s);
      return tree !== undefined && budget.take(s, tree, bytes);
    },
    freed: (s) => budget.release(s),
    linger: (s) => budget.linger(s),
  };
}

/**
 * Removes every body released and not yet removed (BlobStore.flushReleased), batch by batch: at
 * stop, so a clean stop leaves no unnamed body behind. A failure (the store failed) is logged and
 * leaves the rest for the next start's sweep.
 */
function releaseBodies(blobs: BlobStore | undefined, log: Logger): void {
  try {
    // A batch a pass; a pass that removed nothing from the queue ends it (never a loop that does not end).
    for (let left = blobs?.pendingReleases ?? 0; blobs && left > 0; ) {
      blobs.flushReleased();
      if (blobs.pendingReleases >= left) break;
      left = blobs.pendingReleases;
    }
  } catch (e) {
    log.warn({ err: e }, "removing released object bodies failed; the next start removes them");
  }
}
