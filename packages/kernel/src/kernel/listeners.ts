import { GRPC_MAX_MESSAGE_BYTES } from "@kpip/protocol";
import type { KernelConfig } from "../config.js";
import type { Logger } from "../log.js";
import type { Connection } from "../session/connection.js";
import type { PeerLogLimiter } from "../session/log-limit.js";
import { peerKey } from "../session/peer-key.js";
import type { ConnectionRefusal } from "../transport/connection-caps.js";
import {
  type ConnectionClosing,
  GRPC_MAX_HEADER_FIELDS,
  GRPC_MAX_HEADER_LIST_BYTES,
  GrpcListener,
  type StreamRefusal,
} from "../transport/grpc.js";
import { UdsListener } from "../transport/uds.js";

/** The kernel's transports, listening. */
export interface Listeners {
  readonly uds: UdsListener;
  readonly grpc: GrpcListener | undefined;
}

/**
 * Opens the Unix socket and, when configured, the gRPC transport; every connection goes to
 * `accept`. `opened` holds each listener as soon as it exists, so a failure can close them.
 */
export async function openListeners(
  c: KernelConfig,
  accept: (conn: Connection) => void,
  peerLog: PeerLogLimiter,
  log: Logger,
  opened: { uds?: UdsListener; grpc?: GrpcListener },
  /** A gRPC connection refused at a connection bound (the kernel counts it in its metrics). */
  connectionRefused: (bound: ConnectionRefusal) => void = () => {},
  /** A gRPC connection without an attested session shed at grpcMaxConnections for a new one (counted likewise). */
  connectionShed: () => void = () => {},
  /** A gRPC stream refused before the kernel saw it (counted likewise). */
  streamRefused: (reason: StreamRefusal, count: number) => void = () => {},
  /** An open gRPC connection closed by the kernel (counted likewise). */
  connectionClosed: (reason: ConnectionClosing) => void = () => {},
): Promise<Listeners> {
  const uds = new UdsListener(c.socket, accept);
  opened.uds = uds;
  // Accept failures (EMFILE under a connection flood) come once per attempt: rate-limited like a peer's lines.
  uds.onError = (e) => peerLog.write("uds:listener", "error", { err: e }, "listener error");
  await uds.listen();
  if (uds.peersUnknown)
    log.warn({ reason: uds.peersUnknown }, "Unix-socket peer processes unknown: session records name no pid, uid or gid");
  if (!c.grpcListen) return { uds, grpc: undefined };
  // A fixed message size, not one whole frame: grpc-js buffers a message whole, for any stream
  // (one before HELLO too); larger frames span messages (PROTOCOL §3.6).
  const grpc = new GrpcListener(
    c.grpcListen,
    { cert: c.grpcTlsCert || undefined, key: c.grpcTlsKey || undefined, clientCa: c.grpcTlsClientCa || undefined },
    GRPC_MAX_MESSAGE_BYTES,
    accept,
    // A connection without a stream is held no longer than a handshake may take.
    c.handshakeTimeoutMs,
    {
      connections: { perPeer: c.grpcMaxConnectionsPerPeer, total: c.grpcMaxConnections },
      // More streams than this on one connection are refused or shed by the kernel anyway (every
      // session and every half-open handshake it will hold at once), so no client needs more.
      streamsPerConnection: c.maxSessions + c.preauthPerTransport,
      streamPeerRate: c.grpcStreamPeerRate,
    },
  );
  opened.grpc = grpc;
  grpc.onError = (e) => log.warn({ err: e }, "gRPC listener");
  // Before any stream, so keyed by address like a handshake's lines: a peer cannot make it log without bound.
  grpc.onTlsRefused = (peer, reason) =>
    peerLog.write(`grpc:${peerKey(peer)}`, "warn", { transport: "grpc", address: peer, reason }, "TLS handshake refused");
  grpc.onStreamRefused = (peer, reason, closed, count) => {
    streamRefused(reason, count);
    peerLog.write(
      `grpc:${peerKey(peer)}`,
      "warn",
      { transport: "grpc", address: peer, reason, connectionClosed: closed, streams: count },
      reason === "rate"
        ? "gRPC stream refused: grpcStreamPeerRate reached"
        : reason === "malformed"
          ? `gRPC streams refused by HTTP/2 (malformed, or more than ${GRPC_MAX_HEADER_FIELDS} header fields), connection closed`
          : `gRPC stream refused: header list over ${GRPC_MAX_HEADER_LIST_BYTES} bytes, connection closed`,
    );
  };
  grpc.onCompressedRefused = (peer, encoding) => {
    streamRefused("compressed", 1);
    peerLog.write(
      `grpc:${peerKey(peer)}`,
      "warn",
      { transport: "grpc", address: peer, encoding: encoding.slice(0, 64) },
      "gRPC stream refused: compressed messages",
    );
  };
  // Keyed by address too; over the total every refusal shares one key, so a crowd of addresses logs no more than one peer.
  grpc.onConnectionRefused = (peer, bound) => {
    connectionRefused(bound);
    peerLog.write(
      bound === "total" ? "grpc:connections" : `grpc:${peerKey(peer)}`,
      "warn",
      { transport: "grpc", address: peer, bound },
      bound === "peer"
        ? "gRPC connection refused: grpcMaxConnectionsPerPeer reached"
        : bound === "rate"
          ? "gRPC connection refused: grpcStreamPeerRate reached"
          : "gRPC connection refused: grpcMaxConnections reached",
    );
  };
  grpc.onConnectionClosed = (peer, reason, overheadBytes) => {
    connectionClosed(reason);
    peerLog.write(
      `grpc:${peerKey(peer)}`,
      "warn",
      { transport: "grpc", address: peer, reason, overheadBytes },
      "gRPC connection closed: more bytes of frames that carry nothing (WINDOW_UPDATE, PRIORITY, PING, ...) than it earned",
    );
  };
  // At the total under one key: a crowd of addresses shedding each other logs no more than one peer.
  grpc.onConnectionShed = (peer, shed, bound) => {
    connectionShed();
    peerLog.write(
      bound === "peer" ? `grpc:${peerKey(peer)}` : "grpc:connections",
      "warn",
      { transport: "grpc", address: peer, shed, bound },
      bound === "peer"
        ? "gRPC connection shed: grpcMaxConnectionsPerPeer reached, that peer's oldest connection without an attested session closed"
        : "gRPC connection shed: grpcMaxConnections reached, the oldest connection without an attested session closed",
    );
  };
  await grpc.start();
  if (grpc.loopbackUsersUnknown)
    log.warn(
      { reason: grpc.loopbackUsersUnknown },
      "gRPC loopback peers' local users unknown: every local user shares one peer key, and records name no uid",
    );
  if (!grpc.secure) log.warn({ address: grpc.address }, "gRPC without TLS (loopback only)");
  return { uds, grpc };
}
