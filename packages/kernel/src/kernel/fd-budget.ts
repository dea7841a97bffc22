import { readFileSync } from "node:fs";
import { ConfigError, type KernelConfig } from "../config.js";
import { SHM_LINGER_MAX } from "../session/shm-budget.js";

/**
 * Descriptors the kernel keeps besides its connections and children: the store and its WAL,
 * the open audit segment and up to 4 read ones, log and metrics sockets, the admin's own
 * session, file-store temporaries, the scratch removers' pipes (fixed part).
 */
export const DESCRIPTOR_MARGIN = 128;
/** The kernel's end of a running agent's stdout, stderr, handoff pipe (fd 3) and connection (fd 4). */
export const DESCRIPTORS_PER_AGENT = 4;
/** The kernel's end of a running command's stdout and stderr. */
export const DESCRIPTORS_PER_COMMAND = 2;

/** What the kernel may hold open at once under its bounds, part by part (each bound counted once). */
export interface DescriptorNeed {
  grpc: number;
  /** Half-open Unix-socket connections (gRPC's are streams on connections `grpc` counts). */
  handshakes: number;
  sessions: number;
  /** Agents that may run at once: maxAgents, within maxProcesses. */
  agents: number;
  /** The rest of maxProcesses: commands. */
  commands: number;
  /**
   * Shared-memory segments (shmThreshold above 0): a Unix-socket session holds its own and its
   * peer's (2 × maxSessions), a half-open one its peer's once an ATTEST came through it
   * (preauthPerTransport), and at most SHM_LINGER_MAX more are kept for their grace after their
   * session ended. 0 with shared memory off.
   */
  segments: number;
  total: number;
}

/**
 * The descriptors the kernel's bounds let it hold. Every TCP connection to the gRPC listener
 * is one (grpcMaxConnections), whatever it carries: a half-open gRPC handshake is a stream on
 * one of them, so only the Unix socket's half-open connections (preauthPerTransport) come on
 * top; an agent's handshake is on its own socket pair, counted with the agent. Attested
 * sessions (maxSessions) are counted whole, though a gRPC or agent session's descriptor is
 * already counted above; with shared memory on, so are the segments a Unix-socket session
 * holds (the kernel reads and writes them through descriptors: 3 per session in all, which
 * the count of one per session left out). Running children are bounded by maxProcesses,
 * agents and commands together; of them at most maxAgents are agents.
 */
export function descriptorNeed(c: KernelConfig): DescriptorNeed {
  const agents = Math.min(c.maxAgents, c.maxProcesses);
  const commands = c.maxProcesses - agents;
  const need = {
    grpc: c.grpcMaxConnections,
    handshakes: c.preauthPerTransport,
    sessions: c.maxSessions,
    agents,
    commands,
    segments: c.shmThreshold > 0 ? 2 * c.maxSessions + c.preauthPerTransport + SHM_LINGER_MAX : 0,
  };
  const total =
    need.grpc +
    need.handshakes +
    need.sessions +
    need.segments +
    DESCRIPTORS_PER_AGENT * agents +
    DESCRIPTORS_PER_COMMAND * commands +
    DESCRIPTOR_MARGIN;
  return { ...need, total };
}

/** The soft RLIMIT_NOFILE of this process (Node has no API: /proc/self/limits); undefined when unknown or unlimited. */
export function readNofileLimit(path = "/proc/self/limits"): number | undefined {
  try {
    const m = /^Max open files\s+(\S+)/m.exec(readFileSync(path, "utf8"));
    const n = m ? Number(m[1]) : Number.NaN;
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * With gRPC on, refuses to start (ConfigError) when what the kernel admits cannot all have a
 * descriptor ({@link descriptorNeed}). Under `ulimit -n 1024` an unauthenticated peer held
 * ~1024 gRPC connections — every descriptor: the admin could not connect and a session's
 * storage.write failed EMFILE. Refusing, not lowering the bound quietly: the operator sees the
 * numbers and chooses (PROTOCOL §8.8). Kernel.start asks first, before it opens anything.
 */
export function checkDescriptorBudget(c: KernelConfig, limit = readNofileLimit()): void {
  if (!c.grpcListen || limit === undefined) return;
  const n = descriptorNeed(c);
  if (n.total <= limit) return;
  const room = limit - (n.total - n.grpc);
  throw new ConfigError(
    `the open-file limit (RLIMIT_NOFILE ${limit}) is below what the kernel may hold: ` +
      `grpcMaxConnections ${n.grpc} + preauthPerTransport ${n.handshakes} + maxSessions ${n.sessions}` +
      ` + ${DESCRIPTORS_PER_AGENT} × ${n.agents} agents (maxAgents ${c.maxAgents}, at most maxProcesses)` +
      ` + ${DESCRIPTORS_PER_COMMAND} × ${n.commands} commands (the rest of maxProcesses ${c.maxProcesses})` +
      (n.segments > 0
        ? ` + ${n.segments} shared-memory segments (2 × maxSessions + preauthPerTransport + ${SHM_LINGER_MAX} in their grace; shmThreshold 0 turns them off)`
        : "") +
      ` + ${DESCRIPTOR_MARGIN} = ${n.total}: raise it (ulimit -n ${n.total} or more, LimitNOFILE= under systemd)` +
      (room > 0
        ? `, or set grpcMaxConnections to ${room} or less`
        : ", or lower grpcMaxConnections, maxSessions and maxProcesses"),
  );
}
