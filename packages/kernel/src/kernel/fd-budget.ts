import { readFileSync } from "node:fs";
import { ConfigError, type KernelConfig } from "../config.js";

/**
 * Descriptors the kernel keeps besides its connections: the store and its WAL, the open audit
 * segment and up to 4 read ones, log and metrics sockets, the admin's own session, file-store temporaries (fixed
 * part), plus {@link DESCRIPTORS_PER_AGENT} for each running agent (its pipes and process).
 */
export const DESCRIPTOR_MARGIN = 128;
export const DESCRIPTORS_PER_AGENT = 4;

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
 * With gRPC on, refuses to start (ConfigError) when the connections the kernel admits cannot
 * all have a descriptor: gRPC connections (grpcMaxConnections), half-open handshakes on both
 * transports, Unix-socket sessions (maxSessions), agents and a margin. Under `ulimit -n 1024` an
 * unauthenticated peer held ~1024 gRPC connections — every descriptor: the admin could not
 * connect and a session's storage.write failed EMFILE. Refusing, not lowering the bound quietly:
 * the operator sees the numbers and chooses (PROTOCOL §8.8).
 */
export function checkDescriptorBudget(c: KernelConfig, limit = readNofileLimit()): void {
  if (!c.grpcListen || limit === undefined) return;
  const rest = 2 * c.preauthPerTransport + c.maxSessions + DESCRIPTORS_PER_AGENT * c.maxAgents + DESCRIPTOR_MARGIN;
  const need = c.grpcMaxConnections + rest;
  if (need <= limit) return;
  const room = limit - rest;
  throw new ConfigError(
    `the open-file limit (RLIMIT_NOFILE ${limit}) is below what the kernel may hold: ` +
      `grpcMaxConnections ${c.grpcMaxConnections} + 2 × preauthPerTransport ${c.preauthPerTransport} + maxSessions ${c.maxSessions}` +
      ` + ${DESCRIPTORS_PER_AGENT} × maxAgents ${c.maxAgents} + ${DESCRIPTOR_MARGIN} = ${need}: raise it (ulimit -n ${need} or more, ` +
      `LimitNOFILE= under systemd)${room > 0 ? `, or set grpcMaxConnections to ${room} or less` : ", or lower grpcMaxConnections and maxSessions"}`,
  );
}
