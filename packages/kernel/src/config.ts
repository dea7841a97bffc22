import { statSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { MIN_HEARTBEAT_MS, MIN_MAX_BODY } from "@kpip/protocol";
import { DEFAULT_INTENT_MAX_BYTES, largestRecordBytes, MAX_RECORD_BYTES } from "./audit/record-size.js";
import { IDLE_WORKER_MS } from "./compute/idle-workers.js";
import { FAIL_UPLOADS_AFTER_MS } from "./kernel/storage-space.js";
import { readRegularFile, UnreadableFileError, unsafeDirectoryAboveFile } from "./secure-files.js";
import { CONTROL_FRAME_RATE } from "./session/control-rate.js";
import { READ_HOLD_MS } from "./session/read-gauge.js";
import { repeatedJsonKey } from "./strict-json.js";

/** How a setting is declared: its kind, default (none for home and socket: derived) and help text. */
interface Declared {
  readonly type: "string" | "int";
  readonly default: string | number | undefined;
  /** Whether 0 is a meaningful value (e.g. "no quota"); other ints must be positive. */
  readonly zeroAllowed?: boolean;
  /** One line for `kpip kernel --help` and docs/cli.md. */
  readonly description: string;
}

/**
 * Every kernel setting, declared once: {@link KernelConfig}, {@link SETTINGS} (the config file,
 * `KPIP_<NAME>`, `--<name>` and the help) and {@link DEFAULT_CONFIG} are derived from this table.
 * A new setting is one line here.
 */
const DECLARED = {
  /** State directory: database, keys, admin identity, socket. */
  home: { type: "string", default: undefined, description: "state directory (database, keys, admin identity, socket)" },
  /** Unix socket path (default <home>/kernel.sock). */
  socket: { type: "string", default: undefined, description: "Unix socket path (default <home>/kernel.sock)" },
  logLevel: { type: "string", default: "info", description: "log level: trace, debug, info, warn, error, silent" },
  /** The persona created at first start and allowed everything until capabilities are configured. */
  adminPersona: { type: "string", default: "admin", description: "id of the admin persona created at first start" },
  maxSessions: {
    type: "int",
    default: 1024,
    description: "most attested sessions (connections still handshaking are not counted)",
  },
  /** Attested sessions of one persona with its sub-personas and agents (the admin is not bound by it). */
  maxSessionsPerPersona: {
    type: "int",
    default: 64,
    description: "most attested sessions of one persona with its sub-personas and agents (the admin exempt)",
  },
  /**
   * Sessions one persona tree may open per second (bursts 5×); past it the attestation is refused
   * with the retryable RESOURCE/SESSION_RATE_LIMITED: each open is a durable record (with up to
   * 4 KiB of measurements). The admin exempt; 0 = no bound.
   */
  sessionOpenPersonaRate: {
    type: "int",
    default: 20,
    zeroAllowed: true,
    description:
      "sessions one persona with its sub-personas and agents may open per second (bursts 5×); past it: retryable RESOURCE/SESSION_RATE_LIMITED (the admin exempt; 0 = no bound)",
  },
  maxInFlight: { type: "int", default: 1024, description: "most requests in flight per session" },
  maxBodyBytes: { type: "int", default: 16 * 1024 * 1024, description: "largest frame body accepted, in bytes" },
  heartbeatMs: {
    type: "int",
    default: 5000,
    description: "heartbeat interval, at least 100; a peer silent for 3 intervals is dead",
  },
  handshakeTimeoutMs: {
    type: "int",
    default: 5_000,
    description:
      "time allowed from connect to WELCOME; it also bounds gRPC connections: one that has not finished TLS, or has no stream open, for this long is closed",
  },
  dedupeWindowMs: { type: "int", default: 300_000, description: "how long a response is kept to answer a retried request" },
  /**
   * Requests the dedupe cache remembers in memory (a running one is never forgotten: past it, the
   * oldest answered ones go; a persona tree may have a quarter of it running, DEDUPE_RUNNING_TREE_SHARE).
   */
  dedupeMaxEntries: {
    type: "int",
    default: 100_000,
    description:
      "requests the dedupe cache remembers in memory (72 bytes each); one still running is never forgotten, and a persona tree may have a quarter of them running (past it: retryable RESOURCE)",
  },
  maxObjectBytes: {
    type: "int",
    default: 64 * 1024 * 1024 * 1024,
    description: "largest storage object, in bytes (storage.write is also bounded by one frame; larger ones: the chunked upload)",
  },
  /** Object bodies smaller than this stay inline in the database; larger ones go to the file store (<home>/objects). */
  objectInlineBytes: {
    type: "int",
    default: 128 * 1024,
    zeroAllowed: true,
    description: "object bodies below this size stay in the database; larger ones go to the file store (0 = every body a file)",
  },
  maxUploadsPerPersona: {
    type: "int",
    default: 4,
    description: "chunked uploads in progress per persona tree (its agents and sub-personas included)",
  },
  maxUploads: { type: "int", default: 64, description: "chunked uploads in progress in the kernel" },
  maxUploadBytes: {
    type: "int",
    default: 16 * 1024 * 1024 * 1024,
    description: "bytes all chunked uploads in progress may declare, in the kernel (the disk they may fill)",
  },
  /**
   * A sixteenth of maxUploadBytes, as maxUploadsPerPersona is of maxUploads: a declaration costs
   * nothing while it is held (a byte every uploadIdleMs keeps it), so four trees at a quarter
   * each held every other persona's upload refused.
   */
  maxUploadBytesPerPersona: {
    type: "int",
    default: 1024 * 1024 * 1024,
    description:
      "bytes the chunked uploads in progress of one persona tree (its agents and sub-personas included) may declare: its share of maxUploadBytes (the admin persona exempt)",
  },
  /**
   * FAIL_UPLOADS_AFTER_MS (storage-space.ts: why 10 s); a setting so that the tests of a disk
   * that stays full wait a second for it, not ten.
   */
  fullDiskUploadFailMs: {
    type: "int",
    default: FAIL_UPLOADS_AFTER_MS,
    description:
      "how long (ms) the kernel can record nothing for lack of room before the chunked uploads in progress fail and give their partial bytes back",
  },
  /** An upload with no chunk for this long is discarded with its partial file. */
  uploadIdleMs: { type: "int", default: 600_000, description: "an upload idle this long is discarded with its partial bytes" },
  readHoldMs: {
    type: "int",
    default: READ_HOLD_MS,
    zeroAllowed: true,
    description:
      "how long a Unix-socket connection's reads stop for each read that brings a frame no nearer past the frame's allowance (8 reads of under 4096 bytes that complete no frame); 0: never",
  },
  /**
   * Control frames (PING, PONG, GOODBYE, non-fatal ERROR) one session may send per second after
   * WELCOME, bursts 5×: each is answered or ignored unrecorded, so without a bound one peer held
   * the kernel's thread with them. Past it: fatal RESOURCE/CONTROL_FLOOD. 0 = no bound.
   */
  controlFrameRate: {
    type: "int",
    default: CONTROL_FRAME_RATE,
    zeroAllowed: true,
    description:
      "control frames (PING, PONG, GOODBYE, non-fatal ERROR) one session may send per second after WELCOME (bursts 5×); past it: fatal RESOURCE/CONTROL_FLOOD (0 = no bound)",
  },
  maxWriteBuffer: {
    type: "int",
    default: 64 * 1024 * 1024,
    description: "bytes queued to a non-reading peer before it is dropped",
  },
  /**
   * Answers queued, unread, to the sessions of one persona with its sub-personas and agents:
   * past it, read-only ops that would add an answer are refused RESOURCE (retryable) until the
   * peers read. Per session alone, 64 sessions each holding half their write buffer unread held
   * gigabytes.
   */
  maxQueuedBytesPerPersona: {
    type: "int",
    default: 128 * 1024 * 1024,
    description:
      "bytes of answers queued unread to one persona tree's sessions before its reads are refused (retryable); past it + maxWriteBuffer its sessions are dropped SLOW_CONSUMER",
  },
  /** The same over every session of the kernel. */
  maxQueuedBytes: {
    type: "int",
    default: 512 * 1024 * 1024,
    description: "bytes of answers queued unread to all peers before reads of trees with answers queued are refused (retryable)",
  },
  /**
   * Bytes of /dev/shm the kernel's own shared-memory segments of one persona tree's sessions may
   * hold: a segment keeps the pages of the largest body it carried until its session ends; past
   * the bound a large answer goes inline instead.
   */
  maxShmBytesPerPersona: {
    type: "int",
    default: 64 * 1024 * 1024,
    description:
      "bytes of /dev/shm the kernel's shared-memory segments of one persona tree's sessions may hold (past it large answers go inline)",
  },
  /** The same over every session of the kernel. */
  maxShmBytes: {
    type: "int",
    default: 256 * 1024 * 1024,
    description: "bytes of /dev/shm the kernel's shared-memory segments may hold in all (past it large answers go inline)",
  },
  /** Memory large request bodies are received into and reused from (session/body-pool.ts). */
  bodyPoolBytes: {
    type: "int",
    default: 128 * 1024 * 1024,
    zeroAllowed: true,
    description: "memory kept to receive large request bodies into again, in bytes (0 = fresh memory for each)",
  },
  auditBatchMax: { type: "int", default: 512, description: "most audit records per commit (at most 4096)" },
  auditCheckpointEvery: { type: "int", default: 10_000, description: "records between signed audit checkpoints" },
  /** Largest intent whose bytes an audit record keeps; larger intents keep their hash only. */
  auditIntentMaxBytes: {
    type: "int",
    default: DEFAULT_INTENT_MAX_BYTES,
    description: "largest intent whose bytes the audit record keeps (larger: the hash only)",
  },
  /** A file outside the home to which every signed audit checkpoint is appended too ("" = off). */
  auditAnchorFile: {
    type: "string",
    default: "",
    description:
      "also append every signed audit checkpoint to this file, kept outside the home (another disk, append-only or remote; a regular file of the kernel's user, never a link, in directories no other user may write but sticky ones such as /tmp); `kpip audit verify --anchors` checks the log against it",
  },
  /** A signed checkpoint at least this often while records arrive (ms); with auditCheckpointEvery it bounds the unsigned tail. */
  auditCheckpointIntervalMs: {
    type: "int",
    default: 60_000,
    zeroAllowed: true,
    description: "also sign a checkpoint at least this often (ms) while records arrive (0 = by count only)",
  },
  /** Retention: keep at least this many newest records, pruning older ones behind a signed checkpoint (0 = keep all). */
  auditRetainRecords: {
    type: "int",
    default: 0,
    zeroAllowed: true,
    description: "keep at least this many newest audit records; older ones are pruned behind a signed checkpoint (0 = keep all)",
  },
  /** Refusal records per second one session may cause (bursts 5×); beyond it, one aggregate record per tick. */
  auditRefusalRate: {
    type: "int",
    default: 20,
    description: "refusal records per second per session (bursts 5×); beyond: aggregated",
  },
  /** Refusal records per second one persona may cause over all its sessions (bursts 5×). */
  auditRefusalPersonaRate: { type: "int", default: 100, description: "refusal records per second per persona tree (bursts 5×)" },
  /** Refusals over the rate after which the session is ended with RESOURCE/REFUSAL_FLOOD (0 = never). */
  auditRefusalFloodMax: {
    type: "int",
    default: 10_000,
    zeroAllowed: true,
    description: "refusals over the rate after which a session is ended (RESOURCE/REFUSAL_FLOOD; 0 = never)",
  },
  /** Failed-handshake records per second per transport (bursts 5×); beyond it, one aggregate record per tick. */
  auditHandshakeRate: {
    type: "int",
    default: 20,
    description: "failed-handshake records per second per transport (bursts 5×); beyond: aggregated",
  },
  /** Failed-handshake records per second per peer address on gRPC (bursts 5×). */
  auditHandshakePeerRate: {
    type: "int",
    default: 5,
    description: "failed-handshake records per second per gRPC peer address, IPv6 by its /64 (bursts 5×); beyond: aggregated",
  },
  /** Largest intent whose bytes a refusal record keeps (larger ones: hash, op and target only). */
  auditRefusalIntentMaxBytes: {
    type: "int",
    default: 1024,
    zeroAllowed: true,
    description: "largest intent whose bytes a refusal record keeps (larger: its hash only)",
  },
  /** How long stop() waits for in-flight requests before forcing sessions closed. */
  drainTimeoutMs: { type: "int", default: 10_000, description: "how long stop waits for in-flight requests" },
  /**
   * Bytes one workspace may hold in storage, each object its body, its path and its row
   * (store/object-cost.ts) (0 = no kernel-wide quota; tokens may still limit personas).
   */
  workspaceStorageBytes: {
    type: "int",
    default: 0,
    zeroAllowed: true,
    description: "storage bytes per workspace, each object its body, path and 512 a row (0 = no quota)",
  },
  /** Worker threads for embedder task functions. */
  computeWorkers: { type: "int", default: 2, description: "worker threads for task functions" },
  /** JS heap a task worker may hold (it lives in the kernel's process); 0 = V8's default. */
  computeWorkerHeapMb: {
    type: "int",
    default: 512,
    zeroAllowed: true,
    description: "most JavaScript heap (MiB) a task worker may hold before its task fails RESOURCE (0 = V8's default)",
  },
  /** Idle task workers kept beyond computeWorkers, each one persona's (a worker serves one persona). */
  computeIdleWorkers: {
    type: "int",
    default: 2,
    zeroAllowed: true,
    description: "idle task workers kept warm beyond computeWorkers, each its own persona's",
  },
  /** How long an idle task worker is kept (it holds what its persona's tasks left in its heap). */
  computeIdleWorkerMs: {
    type: "int",
    default: IDLE_WORKER_MS,
    zeroAllowed: true,
    description:
      "an idle task worker idle this long is ended at the next housekeeping tick (0: kept until another persona's worker needs its place)",
  },
  maxPendingOpsPerPersona: {
    type: "int",
    default: 64,
    description: "DEFERRED ops queued or running per persona tree (its agents and sub-personas included)",
  },
  maxPendingOps: { type: "int", default: 1024, description: "DEFERRED ops queued or running in the kernel" },
  /**
   * Largest input (args, CBOR-encoded) of one task op: held in the kernel's memory until the task
   * ends, so a persona tree holds at most maxPendingOpsPerPersona of them.
   */
  maxTaskInputBytes: {
    type: "int",
    default: 1024 * 1024,
    description: "largest input (args, CBOR-encoded) of one task op (compute.submit beyond: SEMANTIC)",
  },
  /** The inputs of the task ops queued or running in the kernel, together. */
  maxQueuedTaskInputBytes: {
    type: "int",
    default: 256 * 1024 * 1024,
    description: "inputs of the task ops queued or running in the kernel, together (compute.submit beyond: RESOURCE)",
  },
  /**
   * A sixteenth of maxQueuedTaskInputBytes, as maxPendingOpsPerPersona is of maxPendingOps: a
   * tree's 64 hanging tasks of 1 MiB held a quarter of the kernel's bytes, four trees all of them.
   */
  maxQueuedTaskInputBytesPerPersona: {
    type: "int",
    default: 16 * 1024 * 1024,
    description:
      "inputs of the task ops one persona tree (its agents and sub-personas included) has queued or running, together: its share of maxQueuedTaskInputBytes (the admin persona exempt)",
  },
  /** How long finished ops and their results are kept. */
  opResultTtlMs: { type: "int", default: 3_600_000, description: "how long finished ops and results are kept" },
  /** Allocations (resource.alloc) one persona tree may hold at once, whatever the resource: each is a row. */
  maxAllocationsPerPersona: {
    type: "int",
    default: 1000,
    description: "resource allocations held at once per persona tree (resource.alloc beyond: RESOURCE)",
  },
  /**
   * Finished ops kept per persona tree, whatever their age: each result may hold 2 × maxOutputBytes.
   * Beyond it the oldest read or older than opResultGraceMs are forgotten; unread results within
   * their grace and the tree's ops queued or running together stay below it (compute.submit
   * beyond: RESOURCE), so at least maxPendingOpsPerPersona.
   */
  maxFinishedOpsPerPersona: {
    type: "int",
    default: 100,
    description:
      "finished ops (and their results) kept per persona tree (at least maxPendingOpsPerPersona); beyond, the oldest read ones are forgotten",
  },
  /** How long a finished op's result that op.result has not handed out yet is kept against maxFinishedOpsPerPersona's trim. */
  opResultGraceMs: {
    type: "int",
    default: 60_000,
    description: "how long an unread op result is kept whatever the tree's other ops (its poller's window to read it)",
  },
  /** Output captured per stream of a command or agent, in bytes. */
  maxOutputBytes: { type: "int", default: 1024 * 1024, description: "output captured per stream of a command or agent" },
  /** Longest an op may run without a deadline of its own. */
  maxRuntimeMs: {
    type: "int",
    default: 3_600_000,
    description: "longest an op or agent may run (a later deadline, timeoutMs or lifetimeMs is cut to it; at most 2^31 - 1)",
  },
  /** Most agents running at once (an ended one counts until its scratch directory is removed). */
  maxAgents: {
    type: "int",
    default: 64,
    description: "most agents running at once (an ended one counts until its scratch directory is removed)",
  },
  /**
   * Agents one spawner's persona tree may run at once (an ended one counts until its scratch
   * directory is removed; the admin persona exempt): its share of maxAgents, so that two trees
   * of sleeping agents (maxProcessesPerPersona each) do not take every place.
   */
  maxAgentsPerPersona: {
    type: "int",
    default: 16,
    description:
      "most agents one persona tree (its agents and sub-personas included) runs at once: its share of maxAgents (the admin exempt)",
  },
  /** How long an ended agent's record and captured output are kept (then pruned, a slice at a time). */
  agentRetentionMs: {
    type: "int",
    default: 3_600_000,
    description: "how long ended agents and their output are kept",
  },
  /** Ended agents kept per spawner's persona tree (the oldest are forgotten first), whatever their age: each may hold 2 × maxOutputBytes. */
  maxEndedAgentsPerPersona: {
    type: "int",
    default: 100,
    description: "ended agents (and their output) kept per spawner's persona tree; older ones are forgotten",
  },
  /**
   * Output and results of ops and agents that ended while the kernel's storage was full, held in
   * memory until there is room to store them: in all, and a quarter of it per persona tree. An
   * end past it is kept without them (its result null, its output a line saying why).
   */
  maxKeptOutputBytes: {
    type: "int",
    default: 64 * 1024 * 1024,
    description:
      "output and results of ops and agents that ended while the storage was full, held in memory until stored (a quarter per persona tree); past it an end is kept without them",
  },
  /** Most personas one persona and its sub-personas may register through persona.register (the admin is exempt). */
  maxRegisteredPersonas: {
    type: "int",
    default: 1000,
    description: "most personas one persona and its sub-personas may register (the admin is exempt)",
  },
  /** host:port for the Prometheus endpoint (/metrics); empty = off. */
  metricsListen: {
    type: "string",
    default: "",
    description:
      "serve Prometheus metrics on host:port (e.g. 127.0.0.1:9464; loopback only unless metricsAllowRemote); off by default",
  },
  /** 1: metricsListen may be a non-loopback address (the endpoint has no TLS and no authentication). */
  metricsAllowRemote: {
    type: "int",
    default: 0,
    zeroAllowed: true,
    description: "1 = let metricsListen be a non-loopback address (no TLS, no authentication: anyone who reaches it reads it)",
  },
  /** 1: label usage series by persona and workspace id; 0: summed per kind (no ids). */
  metricsPersonaLabels: {
    type: "int",
    default: 0,
    zeroAllowed: true,
    description:
      "1 = label usage metrics by persona and workspace id and named resource (0: summed per kind, no ids, named resources as one)",
  },
  /** Frame bodies above this many bytes travel through shared memory on local sessions (0 = never). */
  shmThreshold: {
    type: "int",
    default: 65_536,
    zeroAllowed: true,
    description: "bodies above this many bytes go through shared memory on Unix-socket sessions (0 = off)",
  },
  /** "host:port" for the gRPC transport ("" = off). */
  grpcListen: {
    type: "string",
    default: "",
    description: "host:port for the gRPC transport (off when unset; plaintext only on loopback)",
  },
  /** PEM certificate chain and key for gRPC TLS. */
  grpcTlsCert: { type: "string", default: "", description: "PEM certificate chain for gRPC TLS" },
  grpcTlsKey: { type: "string", default: "", description: "PEM private key for gRPC TLS" },
  /** PEM CA for client certificates: when set, gRPC clients must present one it signed (mTLS). */
  grpcTlsClientCa: {
    type: "string",
    default: "",
    description: "PEM CA: gRPC clients must present a certificate it signed (mTLS)",
  },
  /**
   * Open TCP connections to the gRPC listener in all; at it a new one sheds the oldest connection
   * carrying no attested session, or is closed as it arrives when every one carries one.
   * A client carries its sessions as streams of one connection, so this is about one per client
   * process: far above what sessions need, and below the descriptors the kernel needs besides.
   */
  grpcMaxConnections: {
    type: "int",
    default: 1024,
    description:
      "most open TCP connections to the gRPC listener; at it a new one sheds the oldest connection without an attested session, or is closed as it arrives when every one has one",
  },
  /** Open TCP connections to the gRPC listener from one peer address (an IPv6 address by its /64). */
  grpcMaxConnectionsPerPeer: {
    type: "int",
    default: 64,
    description:
      "most open TCP connections to the gRPC listener from one peer address, IPv6 by its /64 (clients behind one NAT address or on loopback share it); at it a new one sheds that address's oldest connection without an attested session, or is closed as it arrives when every one has one",
  },
  /**
   * New gRPC streams (each a handshake) one peer address may open per second (bursts 5×), on all
   * its connections: past it a stream is refused (RESOURCE_EXHAUSTED, then RST_STREAM NO_ERROR) before grpc-js or
   * the kernel sees it. Each stream cost the kernel ~150 µs of CPU (a call, a session, a timer)
   * whatever the peer did with it: HEADERS then RST_STREAM in a loop (CVE-2023-44487), reconnecting
   * at each GOAWAY, took a 2-core kernel to a full core and its clients from 43 to 3 calls a second.
   */
  grpcStreamPeerRate: {
    type: "int",
    default: 100,
    zeroAllowed: true,
    description:
      "new gRPC streams (handshakes) per second per peer address, IPv6 by its /64 (bursts 5×); past it a stream is refused RESOURCE_EXHAUSTED before the kernel sees it (0 = no bound)",
  },
  // Bounds on what an authenticated peer can grow (docs/security.md, "Bounds: the resource model").
  /** Largest token accepted at ATTEST, token.bind and inline, or minted, in bytes. */
  maxTokenBytes: {
    type: "int",
    default: 8192,
    description: "largest token accepted (ATTEST, token.bind, inline) or minted, in bytes",
  },
  /** Most unexpired tokens (revoked ones included) one persona tree may have minted or refreshed (the admin is exempt). */
  maxLiveTokens: {
    type: "int",
    default: 1000,
    description: "most unexpired tokens, revoked ones included, one persona tree may have minted or refreshed (admin exempt)",
  },
  /** How long an expired token's row is kept (token list shows it) before it is pruned. */
  tokenRetentionMs: {
    type: "int",
    default: 3_600_000,
    description: "how long expired tokens stay listed before they are pruned",
  },
  /** Most event subscriptions per session, per persona, and in the kernel. */
  maxSubscriptionsPerSession: { type: "int", default: 256, description: "most event subscriptions per session" },
  maxSubscriptionsPerPersona: {
    type: "int",
    default: 1024,
    description: "most event subscriptions per persona tree (its agents and sub-personas included), over its sessions",
  },
  maxSubscriptions: { type: "int", default: 65_536, description: "most event subscriptions in the kernel" },
  /** Event bytes queued for slow subscribers: per subscription, per session, in the kernel. */
  eventQueueBytes: {
    type: "int",
    default: 16 * 1024 * 1024,
    description: "event bytes queued per subscription for a slow subscriber",
  },
  eventSessionBytes: {
    type: "int",
    default: 32 * 1024 * 1024,
    description: "event bytes queued per session over its subscriptions",
  },
  eventKernelBytes: {
    type: "int",
    default: 128 * 1024 * 1024,
    description: "event bytes queued in the kernel for all slow subscribers",
  },
  /** Half-open connections per transport; beyond it an older one is shed. */
  preauthPerTransport: {
    type: "int",
    default: 128,
    description: "half-open (not yet attested) connections per transport; beyond it the oldest of the busiest peer is shed",
  },
  /** Half-open connections per peer address on TCP/gRPC; beyond it that peer's oldest is shed. */
  preauthPerPeer: {
    type: "int",
    default: 32,
    description: "half-open connections per peer address on gRPC, IPv6 by its /64; beyond it that peer's oldest is shed",
  },
  /**
   * Of `maxSessions`, and likewise of `maxAgents` and `maxProcesses`, how many only the admin
   * persona may take: trees that fill the rest leave the admin room to connect and act.
   */
  adminReserve: {
    type: "int",
    default: 4,
    zeroAllowed: true,
    description:
      "sessions out of maxSessions, agents out of maxAgents, processes out of maxProcesses, uploads out of maxUploads (with as large a part of maxUploadBytes) and DEFERRED ops out of maxPendingOps (with as large a part of maxQueuedTaskInputBytes) that only the admin persona may take (each at most the bound - 1)",
  },
  /** Log lines one peer may cause per `peerLogWindowMs`; the rest are counted in one "suppressed" line. */
  peerLogLines: {
    type: "int",
    default: 20,
    description: "log lines one peer may cause per peerLogWindowMs (then one summary line)",
  },
  peerLogWindowMs: { type: "int", default: 10_000, description: "window of the per-peer log budget" },
  // ---- the process sandbox ----
  /** "bwrap" (default: every process the kernel starts runs in bubblewrap) or "none" (unconfined, explicit). */
  sandbox: {
    type: "string",
    default: "bwrap",
    description: "bwrap (every agent and command runs in bubblewrap) or none (unconfined: logged, audited, shown by status)",
  },
  /** Extra read-only paths inside every sandbox, ":"-separated (an interpreter's install, a script's directory). */
  sandboxReadPaths: { type: "string", default: "", description: "extra read-only paths inside every sandbox, ':'-separated" },
  /** Parent of the per-process scratch directories ("" = <tmpdir>/kpip-scratch-<uid>-<home hash>, a random suffix added when another user took that name). */
  sandboxScratch: {
    type: "string",
    default: "",
    description:
      "parent of the sandboxes' scratch directories: a directory for the kernel alone, outside the home (not a shared one such as /tmp)",
  },
  /** The unprivileged uid/gid bubblewrap runs as when the kernel runs as root. */
  sandboxUid: {
    type: "int",
    default: 65534,
    description: "unprivileged uid/gid bubblewrap runs as when the kernel runs as root",
  },
  /** Processes (threads included) per sandbox (0 = no limit). */
  sandboxProcesses: {
    type: "int",
    default: 256,
    zeroAllowed: true,
    description: "processes and threads per sandbox (0 = no limit)",
  },
  /** Address space per sandboxed process, in bytes (0 = no limit). */
  sandboxMemoryBytes: {
    type: "int",
    default: 8 * 1024 * 1024 * 1024,
    zeroAllowed: true,
    description: "address space per sandboxed process (0 = no limit)",
  },
  /** CPU seconds per sandboxed process (0 = no limit). */
  sandboxCpuSeconds: {
    type: "int",
    default: 0,
    zeroAllowed: true,
    description: "CPU seconds per sandboxed process (0 = no limit)",
  },
  /** Largest file a sandboxed process may write, in bytes (0 = no limit). */
  sandboxFileBytes: {
    type: "int",
    default: 1024 * 1024 * 1024,
    zeroAllowed: true,
    description: "largest file a sandboxed process writes (0 = no limit)",
  },
  /**
   * Open files per sandboxed process (RLIMIT_NOFILE, soft and hard; 0 = the kernel's own hard
   * limit): every open file is counted in the host's one table (fs.file-max), the kernel's too.
   */
  sandboxFiles: {
    type: "int",
    default: 1024,
    zeroAllowed: true,
    description:
      "open files per sandboxed process (0 = the kernel's own hard limit); the host's file table is shared with the kernel",
  },
  /**
   * Size of each sandbox's /tmp and of its /dev/shm, in bytes (0 = the host's tmpfs default, half
   * the RAM, each): memory file systems, which no RLIMIT counts.
   */
  sandboxTmpBytes: {
    type: "int",
    default: 64 * 1024 * 1024,
    zeroAllowed: true,
    description: "size of each sandbox's /tmp and of its /dev/shm, host memory (0 = half the RAM each)",
  },
  /**
   * Niceness every sandboxed process starts with (0–19); it cannot lower it (RLIMIT_NICE 0), so
   * commands and agents that spin yield the CPU to the kernel's one thread, whoever they are.
   */
  sandboxNice: {
    type: "int",
    default: 10,
    zeroAllowed: true,
    description: "niceness of every sandboxed process, 0-19 (it cannot lower it): the kernel's thread comes first for the CPU",
  },
  /**
   * The OOM killer's adjustment of every sandboxed process (0–1000; 0 = the kernel's own): above
   * the kernel's, so under memory pressure a sandbox's processes go first, not the kernel that
   * every persona waits on. Never below the kernel's own.
   */
  sandboxOomScoreAdj: {
    type: "int",
    default: 500,
    zeroAllowed: true,
    description:
      "oom_score_adj of every sandboxed process, 0-1000 (0 = the kernel's own): the host's OOM killer takes them before the kernel",
  },
  /**
   * 1: sandboxed programs may open pseudo-terminals. Every sandbox's devpts draws on the host's
   * one pool for them outside its first devpts (kernel.pty.max less kernel.pty.reserve, 3,072 by
   * default), bounded by no RLIMIT: one persona's command could take it all, and no other sandbox,
   * nor any container on the host, got a terminal until it ended. 0: /dev/pts is empty.
   */
  sandboxPtys: {
    type: "int",
    default: 0,
    zeroAllowed: true,
    description:
      "1 = sandboxed programs may open pseudo-terminals, from the host's one pool, which one sandbox can take whole (0 = none)",
  },
  /** Most processes (agents and commands) running at once, kernel-wide (an ended one counts until its scratch directory is removed). */
  maxProcesses: {
    type: "int",
    default: 256,
    description: "most agents and commands running at once (an ended one counts until its scratch directory is removed)",
  },
  /** Most processes (agents and commands) one persona may have running at once. */
  maxProcessesPerPersona: {
    type: "int",
    default: 32,
    description: "most agents and commands one persona tree (its agents and sub-personas included) runs at once",
  },
} as const satisfies Record<string, Declared>;

type Declarations = typeof DECLARED;

/** Every kernel setting. The same name is used in the config file, as KPIP_<NAME> and as --<name>. */
export type KernelConfig = {
  -readonly [K in keyof Declarations]: Declarations[K]["type"] extends "int" ? number : string;
};

export interface SettingSpec {
  key: keyof KernelConfig;
  type: "string" | "int";
  description: string;
  /** Whether 0 is a meaningful value (e.g. "no quota"); other ints must be positive. */
  zeroAllowed?: boolean;
}

/** The settings table, in declaration order: drives config-file parsing, env, flags and `kpip kernel --help`. */
export const SETTINGS: SettingSpec[] = (Object.entries(DECLARED) as [keyof KernelConfig, Declared][]).map(([key, d]) => ({
  key,
  type: d.type,
  description: d.description,
  ...(d.zeroAllowed ? { zeroAllowed: true } : {}),
}));

/** Every setting's default but home and socket, which are derived (see {@link resolveConfig}). */
export const DEFAULT_CONFIG = Object.fromEntries(
  Object.entries(DECLARED).flatMap(([k, d]) => (d.default === undefined ? [] : [[k, d.default]])),
) as Omit<KernelConfig, "home" | "socket">;

/** A setting with a bad value; the kernel does not start. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

export const flagName = (k: string) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
export const envName = (k: string) => `KPIP_${k.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;

/** The default home: $XDG_STATE_HOME/kpip, else ~/.local/state/kpip. */
export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_STATE_HOME || join(homedir(), ".local", "state"), "kpip");
}

function coerce(spec: SettingSpec, raw: unknown, where: string): string | number {
  if (spec.type === "string") {
    if (typeof raw !== "string" || raw === "") throw new ConfigError(`${where}: ${spec.key} must be a non-empty string`);
    return raw;
  }
  const n = typeof raw === "number" ? raw : typeof raw === "string" && /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 0 || (n === 0 && !spec.zeroAllowed))
    throw new ConfigError(
      `${where}: ${spec.key} must be a ${spec.zeroAllowed ? "non-negative" : "positive"} integer (got ${String(raw)})`,
    );
  return n;
}

/**
 * Resolves the configuration: flags over env over the config file (<home>/config.json or
 * `configFile`) over defaults.
 */
export function resolveConfig(
  opts: { flags?: Partial<Record<keyof KernelConfig, unknown>>; env?: NodeJS.ProcessEnv; configFile?: string } = {},
): KernelConfig {
  const env = opts.env ?? process.env;
  const flags = opts.flags ?? {};
  const pick = (spec: SettingSpec, file: Record<string, unknown>): string | number | undefined => {
    if (flags[spec.key] !== undefined) return coerce(spec, flags[spec.key], `--${flagName(spec.key)}`);
    const e = env[envName(spec.key)];
    if (e !== undefined && e !== "") return coerce(spec, e, envName(spec.key));
    if (file[spec.key] !== undefined) return coerce(spec, file[spec.key], "config file");
    return undefined;
  };
  const homeSpec = SETTINGS[0] as SettingSpec;
  const home = resolve(String(pick(homeSpec, {}) ?? defaultHome(env)));
  const file = readConfigFile(opts.configFile ?? join(home, "config.json"), opts.configFile !== undefined);
  for (const k of Object.keys(file)) {
    if (!SETTINGS.some((s) => s.key === k)) throw new ConfigError(`config file: unknown setting ${JSON.stringify(k)}`);
  }
  const out: Record<string, unknown> = { ...DEFAULT_CONFIG, home, socket: join(home, "kernel.sock") };
  for (const spec of SETTINGS.slice(1)) {
    const v = pick(spec, file);
    if (v !== undefined) out[spec.key] = v;
  }
  out.socket = resolve(out.socket as string);
  checkValues(out as unknown as KernelConfig);
  if (out.sandbox !== "bwrap" && out.sandbox !== "none")
    throw new ConfigError(`sandbox must be "bwrap" or "none" (got ${JSON.stringify(out.sandbox)})`);
  return out as unknown as KernelConfig;
}

/** Loopback listen hosts, as PROTOCOL §3.6 defines them for plaintext gRPC. */
const LOOPBACK_HOSTS = new Set(["127.0.0.1", "[::1]", "localhost"]);

/** Most dedupeMaxEntries: its table is allocated whole at start (~100 bytes a record with its index). */
export const MAX_DEDUPE_ENTRIES = 10_000_000;

/** Most records per audit commit (auditBatchMax): well below DEDUPE_POSITION_SLACK's margin. */
export const MAX_AUDIT_BATCH = 4096;

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

/** Values whose type is right but whose content is not: refused before the kernel touches its home. */
function checkValues(c: KernelConfig): void {
  if (!LOG_LEVELS.includes(c.logLevel))
    throw new ConfigError(`logLevel must be one of ${LOG_LEVELS.join(", ")} (got ${JSON.stringify(c.logLevel)})`);
  if (c.heartbeatMs < MIN_HEARTBEAT_MS)
    throw new ConfigError(`heartbeatMs must be at least ${MIN_HEARTBEAT_MS} (PROTOCOL §8.5; got ${c.heartbeatMs})`);
  if (c.maxBodyBytes < MIN_MAX_BODY)
    throw new ConfigError(`maxBodyBytes must be at least ${MIN_MAX_BODY} (PROTOCOL §8.3; got ${c.maxBodyBytes})`);
  // Readers refuse a stored record over MAX_RECORD_BYTES as tampering: the kernel must never write one.
  if (largestRecordBytes(c) > MAX_RECORD_BYTES)
    throw new ConfigError(
      `maxBodyBytes ${c.maxBodyBytes} with audit intents kept up to ${Math.max(c.auditIntentMaxBytes, c.auditRefusalIntentMaxBytes)} bytes could make an audit record of ${largestRecordBytes(c)} bytes, more than the ${MAX_RECORD_BYTES} readers accept: lower them`,
    );
  // A tree's unread results and pending ops share maxFinishedOpsPerPersona: below the pending bound it could never be reached.
  if (c.maxFinishedOpsPerPersona < c.maxPendingOpsPerPersona)
    throw new ConfigError(
      `maxFinishedOpsPerPersona ${c.maxFinishedOpsPerPersona} must be at least maxPendingOpsPerPersona ${c.maxPendingOpsPerPersona}: each op queued or running may finish with a result its persona has yet to read`,
    );
  // One Node timer ends an op or an agent: past 2^31 - 1 ms it fires at once (Node's TimeoutOverflowWarning).
  if (c.maxRuntimeMs > 2 ** 31 - 1)
    throw new ConfigError(`maxRuntimeMs must be at most ${2 ** 31 - 1} (about 24.8 days; got ${c.maxRuntimeMs})`);
  if (c.sandboxNice > 19)
    throw new ConfigError(`sandboxNice must be at most 19, the lowest priority there is (got ${c.sandboxNice})`);
  // A start after a kill finds cut-off effects by walking dedupe rows down to DEDUPE_POSITION_SLACK
  // below its window, which holds while a batch is far smaller than that slack (store/sqlite/audit.ts).
  if (c.dedupeMaxEntries > MAX_DEDUPE_ENTRIES)
    throw new ConfigError(`dedupeMaxEntries must be at most ${MAX_DEDUPE_ENTRIES} (got ${c.dedupeMaxEntries})`);
  if (c.auditBatchMax > MAX_AUDIT_BATCH)
    throw new ConfigError(`auditBatchMax must be at most ${MAX_AUDIT_BATCH} (got ${c.auditBatchMax})`);
  if (c.sandboxOomScoreAdj > 1000)
    throw new ConfigError(`sandboxOomScoreAdj must be at most 1000, Linux's largest (got ${c.sandboxOomScoreAdj})`);
  for (const key of ["metricsAllowRemote", "metricsPersonaLabels", "sandboxPtys"] as const) {
    if (c[key] !== 0 && c[key] !== 1) throw new ConfigError(`${key} must be 0 or 1 (got ${c[key]})`);
  }
  for (const key of ["metricsListen", "grpcListen"] as const) {
    const v = c[key];
    if (v === "") continue;
    const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/.exec(v);
    if (!m || Number(m[2]) > 65_535)
      throw new ConfigError(`${key} must be host:port, e.g. 127.0.0.1:9464 or [::1]:9464 (got ${JSON.stringify(v)})`);
    // The metrics endpoint has no TLS and no authentication: loopback unless the operator says otherwise.
    if (key === "metricsListen" && !LOOPBACK_HOSTS.has(m[1] as string) && c.metricsAllowRemote !== 1)
      throw new ConfigError(
        `metricsListen ${v} is not a loopback address (127.0.0.1, [::1], localhost): the endpoint has no TLS and no authentication; set metricsAllowRemote 1 to serve it there anyway`,
      );
  }
}

/** A config file is a few KiB of JSON; one larger is not read. */
const CONFIG_FILE_MAX_BYTES = 1024 * 1024;

/**
 * An explicit config file (`--config`) lies outside the home, which keeps the home's own
 * config.json to its user: whoever can write it chooses every setting — `sandbox none`, the
 * read paths, listeners, the anchor file. So it must be the kernel user's (or root's) and
 * writable by no one else, as ssh's StrictModes asks of its files.
 */
function checkConfigFileOwner(path: string): void {
  let st: ReturnType<typeof statSync>;
  let unsafe: string | undefined;
  try {
    st = statSync(path);
    // Checked by path, then read by path: whoever can write a directory above it could swap
    // the file in between, or for the next start (as the home's directories, case 518).
    // Through a link too: the directories above the file it names.
    unsafe = unsafeDirectoryAboveFile(path, `config file ${path}`);
  } catch {
    return; // said by the read below
  }
  if (unsafe) throw new ConfigError(unsafe);
  const me = process.getuid?.();
  if (me !== undefined && st.uid !== me && st.uid !== 0)
    throw new ConfigError(
      `config file ${path} belongs to uid ${st.uid}, not to the kernel's user (uid ${me}) or root: whoever owns it chooses the kernel's settings`,
    );
  if ((st.mode & 0o022) !== 0)
    throw new ConfigError(
      `config file ${path} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): they would choose the kernel's settings; chmod go-w it`,
    );
}

function readConfigFile(path: string, required: boolean): Record<string, unknown> {
  let text: string;
  if (required) checkConfigFileOwner(path);
  try {
    text = readRegularFile(path, CONFIG_FILE_MAX_BYTES).toString("utf8");
  } catch (e) {
    // A FIFO or device would hang every reader of the home (kpip audit included), not be "no file".
    if (e instanceof UnreadableFileError) throw new ConfigError(`config file ${e.message}`);
    const code = (e as NodeJS.ErrnoException).code;
    if (required) throw new ConfigError(`config file ${path} cannot be read${code ? ` (${code})` : ""}`);
    // Only a file that is not there is no file: one the kernel may not read (EACCES), or a link
    // loop, holds settings the operator meant, which the defaults would silently replace.
    if (code === "ENOENT" || code === "ENOTDIR") return {};
    throw new ConfigError(`config file ${path} exists but cannot be read${code ? ` (${code})` : ""}: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not an object");
  } catch (e) {
    throw new ConfigError(`config file ${path} is not a JSON object: ${(e as Error).message}`);
  }
  // JSON.parse keeps a repeated key's last value: the file would not say what it seems to.
  const twice = repeatedJsonKey(text);
  if (twice !== undefined) throw new ConfigError(`config file ${path} gives ${JSON.stringify(twice)} more than once`);
  return v as Record<string, unknown>;
}
