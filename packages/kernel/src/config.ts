import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";

/** Every kernel setting. The same name is used in the config file, as KPIP_<NAME> and as --<name>. */
export interface KernelConfig {
  /** State directory: database, keys, admin identity, socket. */
  home: string;
  /** Unix socket path (default <home>/kernel.sock). */
  socket: string;
  logLevel: string;
  /** The persona created at first start and allowed everything until capabilities are configured. */
  adminPersona: string;
  maxSessions: number;
  maxInFlight: number;
  maxBodyBytes: number;
  heartbeatMs: number;
  handshakeTimeoutMs: number;
  dedupeWindowMs: number;
  maxObjectBytes: number;
  /** Object bodies smaller than this stay inline in the database; larger ones go to the file store (<home>/objects). */
  objectInlineBytes: number;
  /** Chunked uploads in progress, per persona and in the kernel. */
  maxUploadsPerPersona: number;
  maxUploads: number;
  /** An upload with no chunk for this long is discarded with its partial file. */
  uploadIdleMs: number;
  maxWriteBuffer: number;
  auditBatchMax: number;
  auditCheckpointEvery: number;
  /** Largest intent whose bytes an audit record keeps; larger intents keep their hash only. */
  auditIntentMaxBytes: number;
  /** A file outside the home to which every signed audit checkpoint is appended too ("" = off). */
  auditAnchorFile: string;
  // Audit integrity and growth (docs/security.md, "Authorization, audit integrity and the home").
  /** A signed checkpoint at least this often while records arrive (ms); with auditCheckpointEvery it bounds the unsigned tail. */
  auditCheckpointIntervalMs: number;
  /** Retention: keep at least this many newest records, pruning older ones behind a signed checkpoint (0 = keep all). */
  auditRetainRecords: number;
  /** Refusal records per second one session may cause (bursts 5×); beyond it, one aggregate record per tick. */
  auditRefusalRate: number;
  /** Refusal records per second one persona may cause over all its sessions (bursts 5×). */
  auditRefusalPersonaRate: number;
  /** Refusals over the rate after which the session is ended with RESOURCE/REFUSAL_FLOOD (0 = never). */
  auditRefusalFloodMax: number;
  /** Largest intent whose bytes a refusal record keeps (larger ones: hash, op and target only). */
  auditRefusalIntentMaxBytes: number;
  /** How long stop() waits for in-flight requests before forcing sessions closed. */
  drainTimeoutMs: number;
  /** Bytes one workspace may hold in storage (0 = no kernel-wide quota; tokens may still limit personas). */
  workspaceStorageBytes: number;
  /** Worker threads for embedder task functions. */
  computeWorkers: number;
  /** How long finished ops and their results are kept. */
  opResultTtlMs: number;
  /** Output captured per stream of a command or agent, in bytes. */
  maxOutputBytes: number;
  /** Longest an op may run without a deadline of its own. */
  maxRuntimeMs: number;
  /** Most agents running at once. */
  maxAgents: number;
  /** host:port for the Prometheus endpoint (/metrics); empty = off. */
  metricsListen: string;
  /** Frame bodies above this many bytes travel through shared memory on local sessions (0 = never). */
  shmThreshold: number;
  /** "host:port" for the gRPC transport ("" = off). */
  grpcListen: string;
  /** PEM certificate chain and key for gRPC TLS. */
  grpcTlsCert: string;
  grpcTlsKey: string;
  /** PEM CA for client certificates: when set, gRPC clients must present one it signed (mTLS). */
  grpcTlsClientCa: string;
  // Bounds on what an authenticated peer can grow (docs/security.md, "Bounds: the resource model").
  /** Largest token accepted at ATTEST, token.bind and inline, or minted, in bytes. */
  maxTokenBytes: number;
  /** Most unexpired tokens (revoked ones included) one persona may have minted or refreshed (the admin is exempt). */
  maxLiveTokens: number;
  /** How long an expired token's row is kept (token list shows it) before it is pruned. */
  tokenRetentionMs: number;
  /** Most event subscriptions per session, per persona, and in the kernel. */
  maxSubscriptionsPerSession: number;
  maxSubscriptionsPerPersona: number;
  maxSubscriptions: number;
  /** Event bytes queued for slow subscribers: per subscription, per session, in the kernel. */
  eventQueueBytes: number;
  eventSessionBytes: number;
  eventKernelBytes: number;
  /* Pre-authentication budget (PROTOCOL §3.8): connections that have not attested yet. */
  /** Half-open connections per transport; beyond it an older one is shed. */
  preauthPerTransport: number;
  /** Half-open connections per peer address on TCP/gRPC; beyond it that peer's oldest is shed. */
  preauthPerPeer: number;
  /** Of `maxSessions`, how many only the admin persona may take. */
  adminReserve: number;
  /** Log lines one peer may cause per `peerLogWindowMs`; the rest are counted in one "suppressed" line. */
  peerLogLines: number;
  peerLogWindowMs: number;
  // ---- the process sandbox (agents and compute commands) ----
  /** "bwrap" (default: every process the kernel starts runs in bubblewrap) or "none" (unconfined, explicit). */
  sandbox: string;
  /** Extra read-only paths inside every sandbox, ":"-separated (an interpreter's install, a script's directory). */
  sandboxReadPaths: string;
  /** Parent of the per-process scratch directories ("" = <tmpdir>/kpip-scratch-<uid>-<home hash>). */
  sandboxScratch: string;
  /** The unprivileged uid/gid bubblewrap runs as when the kernel runs as root. */
  sandboxUid: number;
  /** Processes (threads included) per sandbox (0 = no limit). */
  sandboxProcesses: number;
  /** Address space per sandboxed process, in bytes (0 = no limit). */
  sandboxMemoryBytes: number;
  /** CPU seconds per sandboxed process (0 = no limit). */
  sandboxCpuSeconds: number;
  /** Largest file a sandboxed process may write, in bytes (0 = no limit). */
  sandboxFileBytes: number;
  /** Most processes (agents and commands) running at once, kernel-wide. */
  maxProcesses: number;
  /** Most processes (agents and commands) one persona may have running at once. */
  maxProcessesPerPersona: number;
}

interface SettingSpec {
  key: keyof KernelConfig;
  type: "string" | "int";
  description: string;
  /** Whether 0 is a meaningful value (e.g. "no quota"); other ints must be positive. */
  zeroAllowed?: boolean;
}

/** The settings table: drives config-file parsing, env, flags and `kpip kernel --help`. */
export const SETTINGS: SettingSpec[] = [
  { key: "home", type: "string", description: "state directory (database, keys, admin identity, socket)" },
  { key: "socket", type: "string", description: "Unix socket path (default <home>/kernel.sock)" },
  { key: "logLevel", type: "string", description: "log level: trace, debug, info, warn, error, silent" },
  { key: "adminPersona", type: "string", description: "id of the admin persona created at first start" },
  { key: "maxSessions", type: "int", description: "most attested sessions (connections still handshaking are not counted)" },
  { key: "maxInFlight", type: "int", description: "most requests in flight per session" },
  { key: "maxBodyBytes", type: "int", description: "largest frame body accepted, in bytes" },
  { key: "heartbeatMs", type: "int", description: "heartbeat interval; a peer silent for 3 intervals is dead" },
  { key: "handshakeTimeoutMs", type: "int", description: "time allowed from connect to WELCOME" },
  { key: "dedupeWindowMs", type: "int", description: "how long a response is kept to answer a retried request" },
  {
    key: "maxObjectBytes",
    type: "int",
    description: "largest storage object, in bytes (storage.write is also bounded by one frame; larger ones: the chunked upload)",
  },
  {
    key: "objectInlineBytes",
    type: "int",
    description: "object bodies below this size stay in the database; larger ones go to the file store (0 = every body a file)",
    zeroAllowed: true,
  },
  { key: "maxUploadsPerPersona", type: "int", description: "chunked uploads in progress per persona" },
  { key: "maxUploads", type: "int", description: "chunked uploads in progress in the kernel" },
  { key: "uploadIdleMs", type: "int", description: "an upload idle this long is discarded with its partial bytes" },
  { key: "maxWriteBuffer", type: "int", description: "bytes queued to a non-reading peer before it is dropped" },
  { key: "auditBatchMax", type: "int", description: "most audit records per commit" },
  { key: "auditCheckpointEvery", type: "int", description: "records between signed audit checkpoints" },
  {
    key: "auditIntentMaxBytes",
    type: "int",
    description: "largest intent whose bytes the audit record keeps (larger: the hash only)",
  },
  {
    key: "auditAnchorFile",
    type: "string",
    description:
      "also append every signed audit checkpoint to this file, kept outside the home (another disk, append-only or remote); `kpip audit verify --anchors` checks the log against it",
  },
  {
    key: "auditCheckpointIntervalMs",
    type: "int",
    description: "also sign a checkpoint at least this often (ms) while records arrive (0 = by count only)",
    zeroAllowed: true,
  },
  {
    key: "auditRetainRecords",
    type: "int",
    description: "keep at least this many newest audit records; older ones are pruned behind a signed checkpoint (0 = keep all)",
    zeroAllowed: true,
  },
  { key: "auditRefusalRate", type: "int", description: "refusal records per second per session (bursts 5×); beyond: aggregated" },
  { key: "auditRefusalPersonaRate", type: "int", description: "refusal records per second per persona (bursts 5×)" },
  {
    key: "auditRefusalFloodMax",
    type: "int",
    description: "refusals over the rate after which a session is ended (RESOURCE/REFUSAL_FLOOD; 0 = never)",
    zeroAllowed: true,
  },
  {
    key: "auditRefusalIntentMaxBytes",
    type: "int",
    description: "largest intent whose bytes a refusal record keeps (larger: its hash only)",
    zeroAllowed: true,
  },
  { key: "drainTimeoutMs", type: "int", description: "how long stop waits for in-flight requests" },
  {
    key: "workspaceStorageBytes",
    type: "int",
    description: "storage bytes per workspace (0 = no quota)",
    zeroAllowed: true,
  },
  { key: "computeWorkers", type: "int", description: "worker threads for task functions" },
  { key: "opResultTtlMs", type: "int", description: "how long finished ops and results are kept" },
  { key: "maxOutputBytes", type: "int", description: "output captured per stream of a command or agent" },
  { key: "maxRuntimeMs", type: "int", description: "longest an op or agent may run without its own deadline" },
  { key: "maxAgents", type: "int", description: "most agents running at once" },
  {
    key: "metricsListen",
    type: "string",
    description: "serve Prometheus metrics on host:port (e.g. 127.0.0.1:9464); off by default",
  },
  {
    key: "shmThreshold",
    type: "int",
    description: "bodies above this many bytes go through shared memory on Unix-socket sessions (0 = off)",
    zeroAllowed: true,
  },
  {
    key: "grpcListen",
    type: "string",
    description: "host:port for the gRPC transport (off when unset; plaintext only on loopback)",
  },
  { key: "grpcTlsCert", type: "string", description: "PEM certificate chain for gRPC TLS" },
  { key: "grpcTlsKey", type: "string", description: "PEM private key for gRPC TLS" },
  { key: "grpcTlsClientCa", type: "string", description: "PEM CA: gRPC clients must present a certificate it signed (mTLS)" },
  // Bounds on what an authenticated peer can grow (docs/security.md, "Bounds: the resource model").
  { key: "maxTokenBytes", type: "int", description: "largest token accepted (ATTEST, token.bind, inline) or minted, in bytes" },
  {
    key: "maxLiveTokens",
    type: "int",
    description: "most unexpired tokens, revoked ones included, one persona may have minted or refreshed (admin exempt)",
  },
  { key: "tokenRetentionMs", type: "int", description: "how long expired tokens stay listed before they are pruned" },
  { key: "maxSubscriptionsPerSession", type: "int", description: "most event subscriptions per session" },
  { key: "maxSubscriptionsPerPersona", type: "int", description: "most event subscriptions per persona, over its sessions" },
  { key: "maxSubscriptions", type: "int", description: "most event subscriptions in the kernel" },
  { key: "eventQueueBytes", type: "int", description: "event bytes queued per subscription for a slow subscriber" },
  { key: "eventSessionBytes", type: "int", description: "event bytes queued per session over its subscriptions" },
  { key: "eventKernelBytes", type: "int", description: "event bytes queued in the kernel for all slow subscribers" },
  {
    key: "preauthPerTransport",
    type: "int",
    description: "half-open (not yet attested) connections per transport; beyond it the oldest of the busiest peer is shed",
  },
  {
    key: "preauthPerPeer",
    type: "int",
    description: "half-open connections per peer address on gRPC; beyond it that peer's oldest is shed",
  },
  {
    key: "adminReserve",
    type: "int",
    description: "sessions out of maxSessions that only the admin persona may take (at most maxSessions - 1)",
    zeroAllowed: true,
  },
  { key: "peerLogLines", type: "int", description: "log lines one peer may cause per peerLogWindowMs (then one summary line)" },
  { key: "peerLogWindowMs", type: "int", description: "window of the per-peer log budget" },
  // ---- the process sandbox ----
  {
    key: "sandbox",
    type: "string",
    description: "bwrap (every agent and command runs in bubblewrap) or none (unconfined: logged, audited, shown by status)",
  },
  { key: "sandboxReadPaths", type: "string", description: "extra read-only paths inside every sandbox, ':'-separated" },
  { key: "sandboxScratch", type: "string", description: "parent of the sandboxes' scratch directories (outside the home)" },
  { key: "sandboxUid", type: "int", description: "unprivileged uid/gid bubblewrap runs as when the kernel runs as root" },
  { key: "sandboxProcesses", type: "int", description: "processes and threads per sandbox (0 = no limit)", zeroAllowed: true },
  {
    key: "sandboxMemoryBytes",
    type: "int",
    description: "address space per sandboxed process (0 = no limit)",
    zeroAllowed: true,
  },
  { key: "sandboxCpuSeconds", type: "int", description: "CPU seconds per sandboxed process (0 = no limit)", zeroAllowed: true },
  {
    key: "sandboxFileBytes",
    type: "int",
    description: "largest file a sandboxed process writes (0 = no limit)",
    zeroAllowed: true,
  },
  { key: "maxProcesses", type: "int", description: "most agents and commands running at once" },
  { key: "maxProcessesPerPersona", type: "int", description: "most agents and commands one persona runs at once" },
];

export const DEFAULT_CONFIG: Omit<KernelConfig, "home" | "socket"> = {
  logLevel: "info",
  adminPersona: "admin",
  maxSessions: 1024,
  maxInFlight: 1024,
  maxBodyBytes: 16 * 1024 * 1024,
  heartbeatMs: 5000,
  handshakeTimeoutMs: 5_000,
  dedupeWindowMs: 300_000,
  maxObjectBytes: 64 * 1024 * 1024 * 1024,
  objectInlineBytes: 128 * 1024,
  maxUploadsPerPersona: 4,
  maxUploads: 64,
  uploadIdleMs: 600_000,
  maxWriteBuffer: 64 * 1024 * 1024,
  auditBatchMax: 512,
  auditCheckpointEvery: 10_000,
  auditIntentMaxBytes: 65_536,
  auditAnchorFile: "",
  auditCheckpointIntervalMs: 60_000,
  auditRetainRecords: 0,
  auditRefusalRate: 20,
  auditRefusalPersonaRate: 100,
  auditRefusalFloodMax: 10_000,
  auditRefusalIntentMaxBytes: 1024,
  drainTimeoutMs: 10_000,
  workspaceStorageBytes: 0,
  computeWorkers: 2,
  opResultTtlMs: 3_600_000,
  maxOutputBytes: 1024 * 1024,
  maxRuntimeMs: 3_600_000,
  maxAgents: 64,
  metricsListen: "",
  shmThreshold: 65_536,
  grpcListen: "",
  grpcTlsCert: "",
  grpcTlsKey: "",
  grpcTlsClientCa: "",
  maxTokenBytes: 8192,
  maxLiveTokens: 1000,
  tokenRetentionMs: 3_600_000,
  maxSubscriptionsPerSession: 256,
  maxSubscriptionsPerPersona: 1024,
  maxSubscriptions: 65_536,
  eventQueueBytes: 16 * 1024 * 1024,
  eventSessionBytes: 32 * 1024 * 1024,
  eventKernelBytes: 128 * 1024 * 1024,
  preauthPerTransport: 128,
  preauthPerPeer: 32,
  adminReserve: 4,
  peerLogLines: 20,
  peerLogWindowMs: 10_000,
  // ---- the process sandbox ----
  sandbox: "bwrap",
  sandboxReadPaths: "",
  sandboxScratch: "",
  sandboxUid: 65534,
  sandboxProcesses: 256,
  sandboxMemoryBytes: 8 * 1024 * 1024 * 1024,
  sandboxCpuSeconds: 0,
  sandboxFileBytes: 1024 * 1024 * 1024,
  maxProcesses: 256,
  maxProcessesPerPersona: 32,
};

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

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

/** Values whose type is right but whose content is not: refused before the kernel touches its home. */
function checkValues(c: KernelConfig): void {
  if (!LOG_LEVELS.includes(c.logLevel))
    throw new ConfigError(`logLevel must be one of ${LOG_LEVELS.join(", ")} (got ${JSON.stringify(c.logLevel)})`);
  for (const key of ["metricsListen", "grpcListen"] as const) {
    const v = c[key];
    if (v === "") continue;
    const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/.exec(v);
    if (!m || Number(m[2]) > 65_535)
      throw new ConfigError(`${key} must be host:port, e.g. 127.0.0.1:9464 or [::1]:9464 (got ${JSON.stringify(v)})`);
  }
}

function readConfigFile(path: string, required: boolean): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    if (required) throw new ConfigError(`config file ${path} cannot be read`);
    return {};
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not an object");
    return v;
  } catch (e) {
    throw new ConfigError(`config file ${path} is not a JSON object: ${(e as Error).message}`);
  }
}
