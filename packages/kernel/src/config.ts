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
  maxWriteBuffer: number;
  auditBatchMax: number;
  auditCheckpointEvery: number;
  /** Largest intent whose bytes an audit record keeps; larger intents keep their hash only. */
  auditIntentMaxBytes: number;
  /** A file outside the home to which every signed audit checkpoint is appended too ("" = off). */
  auditAnchorFile: string;
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
  { key: "maxSessions", type: "int", description: "most concurrent sessions" },
  { key: "maxInFlight", type: "int", description: "most requests in flight per session" },
  { key: "maxBodyBytes", type: "int", description: "largest frame body accepted, in bytes" },
  { key: "heartbeatMs", type: "int", description: "heartbeat interval; a peer silent for 3 intervals is dead" },
  { key: "handshakeTimeoutMs", type: "int", description: "time allowed from connect to WELCOME" },
  { key: "dedupeWindowMs", type: "int", description: "how long a response is kept to answer a retried request" },
  { key: "maxObjectBytes", type: "int", description: "largest storage object, in bytes" },
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
  handshakeTimeoutMs: 10_000,
  dedupeWindowMs: 300_000,
  maxObjectBytes: 16 * 1024 * 1024 - 64 * 1024,
  maxWriteBuffer: 64 * 1024 * 1024,
  auditBatchMax: 512,
  auditCheckpointEvery: 10_000,
  auditIntentMaxBytes: 65_536,
  auditAnchorFile: "",
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
  if (out.sandbox !== "bwrap" && out.sandbox !== "none")
    throw new ConfigError(`sandbox must be "bwrap" or "none" (got ${JSON.stringify(out.sandbox)})`);
  return out as unknown as KernelConfig;
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
