import { createHash } from "node:crypto";
import type { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { type Http2Session, constants as h2c, type IncomingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import type { Socket } from "node:net";
import nodeTls, { type TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { TurnBatcher, writeMessages } from "@kpip/protocol";
import { BURST_SECONDS, type Bucket, drain, RateBuckets } from "../audit/rate-buckets.js";
import { ConfigError } from "../config.js";
import {
  type Connection,
  FragmentGauge,
  PEER_CLOSE_GRACE_MS,
  PeerCloseCut,
  type PeerCloseTimeout,
  TransportFragmented,
  TransportMessageTooLarge,
  type TransportRefusal,
} from "../session/connection.js";
import { LOOPBACK_PEER, overflowKey, peerKey } from "../session/peer-key.js";
import { ConnectionCaps, type ConnectionLimits, type ConnectionRefusal } from "./connection-caps.js";
import { GRPC_OVERHEAD_BYTES_PER_STREAM, OverheadBudget } from "./h2-overhead.js";
import { type LoopbackOwnerReader, loopbackOwnerReader } from "./peer-process.js";

const bytes = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };

/**
 * `kpip.v1.Kernel/Session`: one bidirectional stream per KPIP session, each message an opaque
 * chunk of the KPIP frame stream (PROTOCOL §4.5). Everything above the frame layer is the
 * same code as over the Unix socket.
 */
export const KPIP_GRPC_SERVICE: grpc.ServiceDefinition = {
  Session: {
    path: "/kpip.v1.Kernel/Session",
    requestStream: true,
    responseStream: true,
    requestSerialize: bytes.serialize,
    requestDeserialize: bytes.deserialize,
    responseSerialize: bytes.serialize,
    responseDeserialize: bytes.deserialize,
  },
};

/** PEM file paths for the gRPC listener; with `clientCa`, client certificates are required (mTLS). */
export interface GrpcTlsFiles {
  cert?: string;
  key?: string;
  clientCa?: string;
}

/**
 * Largest request header list a stream may carry, counted as HTTP/2 counts it (each field's name
 * and value plus 32), the metadata bound gRPC implementations commonly use. Advertised in SETTINGS
 * (MAX_HEADER_LIST_SIZE); a stream over it closes its connection (GOAWAY ENHANCE_YOUR_CALM) before
 * grpc-js or the kernel sees it, since Node applies the setting only once the peer acknowledged it.
 */
export const GRPC_MAX_HEADER_LIST_BYTES = 8192;
/**
 * Header fields a stream may carry; Node refuses a stream past it (RST_STREAM ENHANCE_YOUR_CALM)
 * before any field becomes a string. A KPIP call sends about ten.
 */
export const GRPC_MAX_HEADER_FIELDS = 32;
/** Streams refused for the peer's stream rate on a connection carrying no attested session before it is closed. */
export const GRPC_REFUSED_STREAMS_PER_CONNECTION = 8;

/**
 * How often each connection is looked at for what HTTP/2 handled without telling JavaScript:
 * streams it refused on its own (malformed, too many header fields), and the bytes of frames
 * that carry nothing (h2-overhead.ts).
 */
export const GRPC_NODE_REFUSALS_CHECK_MS = 250;

/**
 * Why a stream was refused before the kernel saw it (kpip_grpc_streams_refused_total{reason}):
 * over the peer's rate, a header list over GRPC_MAX_HEADER_LIST_BYTES, refused by HTTP/2 itself
 * (malformed headers, more than GRPC_MAX_HEADER_FIELDS fields; counted when the kernel finds
 * them), compressed.
 */
export type StreamRefusal = "rate" | "headers" | "malformed" | "compressed";

/**
 * Why an open gRPC connection was closed by the kernel (kpip_grpc_connections_closed_total{reason}):
 * overhead, more bytes of frames that carry nothing than it earned (h2-overhead.ts).
 */
export type ConnectionClosing = "overhead";

/** An open HTTP/2 connection as the kernel watches it. */
interface H2Connection {
  /** Streams that reached the screen (the rest Node refused itself). */
  screened: number;
  /** Streams refused for the peer's stream rate. */
  refused: number;
  /** Bytes its streams carried in: the header lists of streams let through, and the message bytes read from them. */
  carried: number;
  /** Streams let through and open: the bytes they hold unread count as carried too. */
  readonly streams: Set<ServerHttp2Stream>;
  readonly overhead: OverheadBudget;
}

const LOOPBACK = new Set(["127.0.0.1", "::1", "[::1]", "localhost"]);

/** Splits "host:port" (IPv6 as "[::1]:port"); a ConfigError if it is not one. */
export function parseHostPort(address: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[^:[\]]+):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[2]) : Number.NaN;
  if (!m || port > 65535) throw new ConfigError(`grpcListen must be host:port (got ${JSON.stringify(address)})`);
  return { host: m[1] as string, port };
}

/** Server credentials from the TLS settings; plaintext only on a loopback address. */
export function serverCredentials(address: string, tls: GrpcTlsFiles): { creds: grpc.ServerCredentials; secure: boolean } {
  const { host } = parseHostPort(address);
  if (!tls.cert && !tls.key) {
    if (tls.clientCa) throw new ConfigError("grpcTlsClientCa needs grpcTlsCert and grpcTlsKey");
    if (!LOOPBACK.has(host)) {
      throw new ConfigError(`gRPC on ${address} without TLS: set grpcTlsCert and grpcTlsKey (plaintext is for loopback only)`);
    }
    return { creds: grpc.ServerCredentials.createInsecure(), secure: false };
  }
  if (!tls.cert || !tls.key) throw new ConfigError("grpcTlsCert and grpcTlsKey go together");
  // grpc-js takes Node's TLS floor; PROTOCOL §3.6 requires 1.2 at least (node --tls-min-v1.0 would lower it).
  const floor = nodeTls.DEFAULT_MIN_VERSION;
  if (floor === "TLSv1" || floor === "TLSv1.1") {
    throw new ConfigError(`gRPC needs TLS 1.2 at least; this node allows ${floor} (drop --tls-min-v1.x)`);
  }
  const read = (what: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (e) {
      throw new ConfigError(`${what} ${path} cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  const cert = read("grpcTlsCert", tls.cert);
  const key = read("grpcTlsKey", tls.key);
  const ca = tls.clientCa ? read("grpcTlsClientCa", tls.clientCa) : null;
  try {
    return { creds: grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null), secure: true };
  } catch (e) {
    throw new ConfigError(`TLS material is not usable: ${(e as Error).message}`);
  }
}

/** A gRPC server carrying KPIP sessions; each stream is handed over as a {@link Connection}. */
export class GrpcListener {
  private server: grpc.Server | undefined;
  /** Errors after start (logged by the kernel, never fatal). */
  onError: ((e: Error) => void) | undefined;
  /** A TLS handshake refused before any stream (no or untrusted client certificate, not TLS at all): the peer's IP and why. */
  onTlsRefused: ((peer: string, reason: string) => void) | undefined;
  /** A TCP connection closed as it arrived, over its peer's bound or the listener's total: the peer's IP and which. */
  onConnectionRefused: ((peer: string, bound: ConnectionRefusal) => void) | undefined;
  /**
   * At its peer's bound or the total, an open connection without an attested session closed to
   * let a new one in: the IPs of the new one and of the shed one, and which bound.
   */
  onConnectionShed: ((peer: string, shed: string, bound: "peer" | "total") => void) | undefined;
  /** A stream refused for its compressed messages (`grpc-encoding`): the peer's IP and the encoding. */
  onCompressedRefused: ((peer: string, encoding: string) => void) | undefined;
  /**
   * A stream refused before the kernel saw it: over the peer's stream rate, or a header list over
   * GRPC_MAX_HEADER_LIST_BYTES; `closed` when its connection was closed with it.
   */
  onStreamRefused: ((peer: string, reason: StreamRefusal, closed: boolean, count: number) => void) | undefined;
  /**
   * An open connection closed with GOAWAY ENHANCE_YOUR_CALM: its peer's IP, why, and the bytes
   * that carried nothing it sent in all.
   */
  onConnectionClosed: ((peer: string, reason: ConnectionClosing, overheadBytes: number) => void) | undefined;
  /** "host:port" actually bound (the port resolved when 0 was asked). */
  address = "";
  secure = false;
  /** Open TCP connections per peer key and in all, when they are bounded. */
  private readonly caps: ConnectionCaps<Socket> | undefined;
  /** Counted connections by "address:port" (what a call's getPeer() says), so a stream finds the connection it is on. */
  private readonly sockets = new Map<string, Socket>();
  /** New streams per peer key (grpcStreamPeerRate); undefined when not bounded. */
  private readonly streamBuckets: RateBuckets | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  /** Open HTTP/2 connections: the streams of each that reached the screen, what they carried, its overhead budget. */
  private readonly h2Connections = new Map<Http2Session, H2Connection>();
  /** The stream grpc-js is handed while the screen passes it on: its Session handler runs within that call. */
  private screening: ServerHttp2Stream | undefined;
  /** Every TCP connection open to the listener, whatever carries it (none is left open by {@link close}). */
  private readonly connections = new Set<Socket>();
  /**
   * Each open TCP connection's peer, by "address:port": the key its bounds count it under and,
   * from loopback, the local user owning its socket (or why unknown). Read once, as it arrives.
   */
  private readonly peers = new Map<string, Peer>();
  /** Reads a loopback peer's local user; set at {@link start}. */
  private readOwner: LoopbackOwnerReader = () => "addon not loaded";
  /** Set by {@link start} when loopback peers' users cannot be read (the kernel says why once). */
  loopbackUsersUnknown: string | undefined;

  constructor(
    private readonly listen: string,
    private readonly tls: GrpcTlsFiles,
    /** Largest message accepted or sent (GRPC_MAX_MESSAGE_BYTES): larger frames span messages. */
    private readonly maxMessage: number,
    private readonly accept: (c: Connection) => void,
    /**
     * An HTTP/2 connection with no stream open for this long is closed (GOAWAY; 0 = never):
     * grpc-js keeps one for ever, so idle connections were an unbounded number of the kernel's
     * descriptors any peer that completes TLS could hold. The kernel passes handshakeTimeoutMs.
     */
    private readonly idleConnectionMs = 0,
    /**
     * Bounds no peer can raise: open TCP connections per peer key and in all (past them a new
     * one is refused as it arrives, or at the total sheds one without an attested session), and streams per HTTP/2 connection (advertised in SETTINGS; nghttp2 refuses
     * a stream past it, or ends the connection once the peer acknowledged them). Unset: unbounded,
     * grpc-js's default.
     */
    private readonly bounds: { connections?: ConnectionLimits; streamsPerConnection?: number; streamPeerRate?: number } = {},
  ) {
    this.caps = bounds.connections && new ConnectionCaps<Socket>(bounds.connections);
    const rate = bounds.streamPeerRate ?? 0;
    this.streamBuckets = rate > 0 ? new RateBuckets(() => rate) : undefined;
  }

  /** Open TCP connections now (counted only when connections are bounded). */
  get connectionCount(): number {
    return this.caps?.count ?? 0;
  }

  async start(): Promise<void> {
    const { creds, secure } = serverCredentials(this.listen, this.tls);
    const owners = loopbackOwnerReader();
    this.readOwner = owners.read;
    this.loopbackUsersUnknown = owners.reason;
    // No HTTP/2 keepalive (grpc-js's server default: off): a session's liveness is KPIP's
    // heartbeat (PROTOCOL §8.5), which ends the stream of a silent peer, and a connection left
    // without a stream is closed after idleConnectionMs. (keepalive_permit_without_calls, set here
    // before, is a client option grpc-js's server never read.)
    const server = new grpc.Server({
      "grpc.max_receive_message_length": this.maxMessage,
      "grpc.max_send_message_length": this.maxMessage,
      ...(this.idleConnectionMs > 0 ? { "grpc.max_connection_idle_ms": this.idleConnectionMs } : {}),
      ...(this.bounds.streamsPerConnection ? { "grpc.max_concurrent_streams": this.bounds.streamsPerConnection } : {}),
    });
    this.limitHeaders(server);
    server.addService(KPIP_GRPC_SERVICE, {
      Session: (call: grpc.ServerDuplexStream<Buffer, Buffer>) =>
        this.accept(
          new GrpcStreamConnection(
            call,
            this.maxMessage,
            this.secure,
            PEER_CLOSE_GRACE_MS,
            this.carrierOf(call),
            this.screening && { stream: this.screening, limit: this.maxMessage },
            this.peers.get(call.getPeer()),
          ),
        ),
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(this.listen, creds, (err, p) => (err ? reject(err) : resolve(p))),
    ).catch((e: Error) => {
      throw new ConfigError(`cannot listen for gRPC on ${this.listen}: ${e.message}`);
    });
    const { host } = parseHostPort(this.listen);
    this.address = `${host}:${port}`;
    this.secure = secure;
    this.server = server;
    const h2s = this.http2Servers(server);
    this.screenStreams(h2s);
    this.watchConnections(h2s);
    if (this.streamBuckets) {
      const buckets = this.streamBuckets;
      this.sweepTimer = setInterval(() => buckets.sweep(Date.now()), BURST_SECONDS * 1000).unref();
    }
    if (secure) this.watchTlsRefusals(h2s);
    // After the TLS watch: a connection refused here never gets a TLS timer, nor a TLS handshake.
    this.capConnections(h2s);
    // Put first, after the bound's wrapper: every connection is seen, refused ones too.
    for (const h2 of h2s) {
      h2.prependListener("connection", (raw: Socket) => {
        this.connections.add(raw);
        raw.once("close", () => this.connections.delete(raw));
      });
    }
    // First of all: every bound below counts the connection under the key read here.
    for (const h2 of h2s) h2.prependListener("connection", (raw: Socket) => this.identify(raw));
  }

  /**
   * Reads who a new TCP connection's peer is, once, as it arrives. Every loopback address is one
   * peer key (any local user can bind any 127.x.y.z), so all local users shared one stream rate:
   * one user's penalties (a header bomb, streams HTTP/2 refused, overhead) drained it below empty,
   * and every other local user's new connections were then closed as they arrived. A loopback
   * peer is now keyed by the local user owning its socket (sock_diag: Linux's record, never the
   * peer's word), so a user's penalties cost that user alone; unknown (no addon, not Linux, the
   * peer closed before the read) it shares the one loopback key, as before, with the unknown only.
   */
  private identify(raw: Socket): void {
    const address = raw.remoteAddress ?? "";
    const tuple = `${address}:${raw.remotePort}`;
    const key = peerKey(address);
    if (key !== LOOPBACK_PEER) {
      this.peers.set(tuple, { key });
    } else {
      const user = this.readOwner(raw);
      this.peers.set(tuple, { key: typeof user === "number" ? `${LOOPBACK_PEER} uid ${user}` : key, user });
    }
    raw.once("close", () => this.peers.delete(tuple));
  }

  /** The key a connection's peer is counted under (its address's, when it was not seen arriving). */
  private keyOf(socket: Socket | undefined): string {
    return this.peers.get(tupleOf(socket))?.key ?? peerKey(socket?.remoteAddress ?? "");
  }

  /** grpc-js's HTTP/2 servers (one per bound address); it keeps them private, so this reaches in. */
  private http2Servers(server: grpc.Server): EventEmitter[] {
    const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
    return servers instanceof Map ? [...(servers.keys() as Iterable<EventEmitter>)] : [];
  }

  /**
   * Bounds the header list of every stream, in the options grpc-js gives Node's HTTP/2 server
   * (it exposes no setting for them): an HPACK table entry of 4 KiB named 120 times in a
   * ~130-byte HEADERS frame became ~480 KiB of strings per stream; 800 such streams (80 KiB
   * sent) stalled every client for seconds and took the kernel from 130 to 700 MB.
   */
  private limitHeaders(server: grpc.Server): void {
    const common = (server as unknown as { commonServerOptions?: { maxHeaderListPairs?: number; settings?: object } })
      .commonServerOptions;
    if (!common) {
      this.onError?.(new Error("gRPC request headers cannot be bounded in Node with this grpc-js version"));
      return;
    }
    common.maxHeaderListPairs = GRPC_MAX_HEADER_FIELDS;
    common.settings = { ...common.settings, maxHeaderListSize: GRPC_MAX_HEADER_LIST_BYTES };
  }

  /**
   * Looks at each stream's headers before grpc-js does, in this order:
   * - a header list (or a stream's trailers) over GRPC_MAX_HEADER_LIST_BYTES closes the connection (GOAWAY
   *   ENHANCE_YOUR_CALM) and is charged to the peer's stream rate as a connection's worth of
   *   refused streams: a peer that never acknowledges the kernel's SETTINGS is not held to
   *   them by Node, and closing stops the rest of what it sent from being decoded;
   * - past the peer's stream rate (grpcStreamPeerRate) the stream is refused (a trailers-only
   *   RESOURCE_EXHAUSTED, then RST_STREAM NO_ERROR), and after GRPC_REFUSED_STREAMS_PER_CONNECTION such refusals a connection
   *   carrying no attested session is closed (ENHANCE_YOUR_CALM);
   * - compressed messages (`grpc-encoding` other than identity) are refused: grpc-js inflated
   *   every gzip or deflate message whole before KPIP read a byte, so an unauthenticated peer made
   *   the kernel inflate 16 KiB into 16 MiB of zeros per stream (a quarter of a second of CPU
   *   each; 64 streams, 2 GB). The stream gets the trailers-only status UNIMPLEMENTED with
   *   `grpc-accept-encoding: identity` (what gRPC prescribes for an encoding a server does not
   *   support), then RST_STREAM NO_ERROR, so it holds no stream slot (PROTOCOL §3.6).
   */
  private screenStreams(h2s: EventEmitter[]): void {
    if (h2s.length === 0) {
      this.onError?.(new Error("gRPC streams cannot be screened (compression, header size, rate) with this grpc-js version"));
      return;
    }
    for (const h2 of h2s) {
      const handlers = h2.listeners("stream") as ((stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void)[];
      h2.removeAllListeners("stream");
      h2.on(
        "stream",
        (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number, rawHeaders: unknown, ...rest: unknown[]) => {
          const session = stream.session;
          const conn = session && this.h2Connection(session);
          if (conn) conn.screened++;
          const address = session?.socket?.remoteAddress ?? "";
          const key = this.keyOf(session?.socket);
          const peer = address || "unknown";
          const headerBytes = headerListBytes(rawHeaders, headers);
          if (headerBytes > GRPC_MAX_HEADER_LIST_BYTES) {
            stream.on("error", () => {});
            if (session) closeCalm(session);
            // Charged as a connection's worth of refused streams: a connect-and-bomb loop is held to the rate.
            this.chargeStreams(key, address, GRPC_REFUSED_STREAMS_PER_CONNECTION + 1);
            this.onStreamRefused?.(peer, "headers", true, 1);
            return;
          }
          // Trailers are a header list too, as unbounded by Node while the SETTINGS are not
          // acknowledged (~30 bytes of HPACK references decode to ~130 KB a stream): the same bound.
          stream.on("trailers", (trailers: IncomingHttpHeaders, _flags: number, rawTrailers: unknown) => {
            if (headerListBytes(rawTrailers, trailers) <= GRPC_MAX_HEADER_LIST_BYTES) return;
            stream.on("error", () => {});
            if (session) closeCalm(session);
            this.chargeStreams(key, address, GRPC_REFUSED_STREAMS_PER_CONNECTION + 1);
            this.onStreamRefused?.(peer, "headers", true, 1);
          });
          if (!this.takeStream(key, address)) {
            // A trailers-only status, then RST_STREAM NO_ERROR: closing with an error code made Node
            // build (and format the stack of) an Error per stream, most of a refusal's cost.
            this.answerOnly(stream, grpc.status.RESOURCE_EXHAUSTED, "too many new streams from this address: try again later");
            let closed = false;
            if (session && conn) {
              conn.refused++;
              if (conn.refused > GRPC_REFUSED_STREAMS_PER_CONNECTION && !this.carriesSession(session)) {
                closeCalm(session);
                closed = true;
              }
            }
            this.onStreamRefused?.(peer, "rate", closed, 1);
            return;
          }
          const encoding = headers["grpc-encoding"];
          if (encoding === undefined || (typeof encoding === "string" && encoding.trim().toLowerCase() === "identity")) {
            this.screening = stream;
            try {
              for (const handle of handlers)
                (handle as (...a: unknown[]) => void).call(h2, stream, headers, flags, rawHeaders, ...rest);
            } finally {
              this.screening = undefined;
            }
            if (conn) this.countCarried(conn, stream, headerBytes);
            return;
          }
          this.answerOnly(
            stream,
            grpc.status.UNIMPLEMENTED,
            "compressed messages are not accepted: send grpc-encoding identity",
            {
              "grpc-accept-encoding": "identity",
            },
          );
          this.onCompressedRefused?.(peer, String(encoding));
        },
      );
    }
  }

  /** Ends a stream grpc-js never sees with a trailers-only gRPC status, then RST_STREAM NO_ERROR (it holds no stream slot). */
  private answerOnly(stream: ServerHttp2Stream, status: grpc.status, message: string, extra: Record<string, string> = {}): void {
    stream.on("error", () => {});
    try {
      stream.respond(
        {
          [h2c.HTTP2_HEADER_STATUS]: 200,
          [h2c.HTTP2_HEADER_CONTENT_TYPE]: "application/grpc+proto",
          "grpc-status": String(status),
          "grpc-message": message,
          ...extra,
        },
        { endStream: true },
      );
    } catch {
      // The stream is already gone (the peer reset it): nothing to answer.
    }
    stream.close(h2c.NGHTTP2_NO_ERROR);
  }

  /**
   * Node and nghttp2 refuse some streams themselves and never tell JavaScript: more than
   * GRPC_MAX_HEADER_FIELDS fields, a header list over GRPC_MAX_HEADER_LIST_BYTES once the peer
   * acknowledged the SETTINGS (RST_STREAM ENHANCE_YOUR_CALM), malformed headers such as a
   * repeated pseudo-header (RST_STREAM PROTOCOL_ERROR). 36-field HEADERS in a loop, ~35,000
   * streams a second on one connection, kept the kernel at 0.7 core and its clients at a third
   * of their calls, past any rate. HTTP/2 tells how far the peer's stream ids went
   * (`lastProcStreamID`); streams past those the screen saw were refused by Node. Every
   * GRPC_NODE_REFUSALS_CHECK_MS, a connection with more than GRPC_REFUSED_STREAMS_PER_CONNECTION
   * of them is closed (GOAWAY ENHANCE_YOUR_CALM; no working client sends such streams), and they are
   * charged to its peer's stream rate (down to a burst below empty), so that its new connections
   * are closed as they arrive until the rate has made up for them. The same look spends each
   * connection's overhead budget (lookAtOverhead).
   */
  private watchConnections(h2s: EventEmitter[]): void {
    for (const h2 of h2s) {
      h2.on("session", (session: Http2Session) => this.h2Connection(session));
    }
    this.watchTimer = setInterval(() => {
      const now = Date.now();
      for (const [session, conn] of this.h2Connections) {
        if (session.destroyed) {
          // Its close may have come before the record was made.
          this.h2Connections.delete(session);
          continue;
        }
        const address = session.socket?.remoteAddress ?? "";
        const key = this.keyOf(session.socket);
        const unseen = unseenStreams(session.state.lastProcStreamID ?? 0, session.socket?.bytesRead ?? 0, conn.screened);
        if (unseen > GRPC_REFUSED_STREAMS_PER_CONNECTION) {
          this.chargeStreams(key, address, unseen);
          closeCalm(session);
          this.onStreamRefused?.(address || "unknown", "malformed", true, unseen);
          continue;
        }
        this.lookAtOverhead(session, conn, now, key, address);
      }
    }, GRPC_NODE_REFUSALS_CHECK_MS).unref();
  }

  /** The kernel's record of an HTTP/2 connection, made when first seen and dropped when it closes. */
  private h2Connection(session: Http2Session): H2Connection {
    let conn = this.h2Connections.get(session);
    if (conn) return conn;
    conn = { screened: 0, refused: 0, carried: 0, streams: new Set(), overhead: new OverheadBudget(Date.now()) };
    this.h2Connections.set(session, conn);
    session.once("close", () => this.h2Connections.delete(session));
    return conn;
  }

  /**
   * Counts what a stream let through carries: its header list, and the message bytes grpc-js
   * reads from it (a listener beside grpc-js's: added after it, so it neither starts the stream
   * flowing nor takes a byte from it; none when grpc-js did not read the stream, whose bytes
   * then stay unread and are counted as held).
   */
  private countCarried(conn: H2Connection, stream: ServerHttp2Stream, headerBytes: number): void {
    conn.carried += headerBytes;
    if (stream.closed || stream.destroyed) return;
    conn.streams.add(stream);
    if (stream.readableFlowing !== null) {
      stream.on("data", (chunk: Buffer) => {
        conn.carried += chunk.length;
      });
    }
    stream.once("close", () => {
      conn.carried += stream.readableLength;
      conn.streams.delete(stream);
    });
  }

  /**
   * Closes a connection (GOAWAY ENHANCE_YOUR_CALM) that sent more bytes of frames carrying
   * nothing than it earned (h2-overhead.ts), whatever it carries: no working client comes near
   * it. It is charged to its peer's stream rate as a connection's worth of refused streams and
   * one more per GRPC_OVERHEAD_BYTES_PER_STREAM over (down to a burst below empty), so that its
   * new connections are closed as they arrive until the rate has made up for them. Socket byte
   * counts hold for a socket Node's HTTP/2 reads natively (TLS: the cleartext).
   */
  private lookAtOverhead(session: Http2Session, conn: H2Connection, now: number, key: string, address: string): void {
    const socket = session.socket;
    if (!socket) return;
    let carried = conn.carried;
    for (const s of conn.streams) carried += s.readableLength;
    const budget = conn.overhead.look(now, socket.bytesRead, socket.bytesWritten, carried);
    if (budget >= 0) return;
    this.chargeStreams(
      key,
      address,
      GRPC_REFUSED_STREAMS_PER_CONNECTION + 1 + Math.ceil(-budget / GRPC_OVERHEAD_BYTES_PER_STREAM),
    );
    closeCalm(session);
    this.onConnectionClosed?.(address || "unknown", "overhead", conn.overhead.spent);
  }

  /** Takes `n` streams from the peer's bucket, down to a burst below empty at most. */
  private chargeStreams(key: string, address: string, n: number): void {
    const b = this.streamBucket(key, address);
    if (b) drain(b, n, this.bounds.streamPeerRate ?? 0);
  }

  /** The peer's bucket of new streams, filled to now (a peer past the table's room shares one); undefined when not bounded. */
  private streamBucket(key: string, address: string): Bucket | undefined {
    const buckets = this.streamBuckets;
    if (!buckets) return undefined;
    const now = Date.now();
    // Past the table's room a peer shares its /24 or /48's bucket, and only past that everyone's.
    return buckets.takeIfRoom(key, now) ?? buckets.takeIfRoom(overflowKey(address), now) ?? buckets.take("(other peers)", now);
  }

  /** Takes one new stream from the peer's bucket; true if there was one. */
  private takeStream(key: string, address: string): boolean {
    const b = this.streamBucket(key, address);
    if (!b) return true;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /**
   * The peer may open a stream now: takes nothing, and makes no bucket (a connection that opens
   * no stream must not fill the table, or its overflow, for peers that do).
   */
  private streamsLeft(key: string, address: string): boolean {
    const buckets = this.streamBuckets;
    if (!buckets) return true;
    const now = Date.now();
    const b = buckets.peek(key, now) ?? (buckets.full ? buckets.peek(overflowKey(address), now) : undefined);
    return !b || b.tokens >= 1;
  }

  /** The TCP connection under `session` carries an attested session (so it is never closed for its refused streams). */
  private carriesSession(session: Http2Session): boolean {
    const socket = session.socket;
    const raw = socket && this.sockets.get(`${socket.remoteAddress}:${socket.remotePort}`);
    return raw !== undefined && this.caps?.carriesSession(raw) === true;
  }

  /**
   * Bounds the TCP connections the listener holds, per peer key and in all, where they arrive:
   * a connection over its peer's bound, or at a total whose every connection carries an attested
   * session, is destroyed before TLS or HTTP/2 sees it; otherwise at the total the oldest
   * connection without an attested session is destroyed to make room (connection-caps.ts).
   * Before this any peer could open connections faster than handshakeTimeoutMs closed them, one
   * kernel descriptor each. The HTTP/2 server's own connection handlers (TLS, HTTP/2) run only
   * for an admitted one.
   */
  private capConnections(h2s: EventEmitter[]): void {
    const caps = this.caps;
    if (!caps) return;
    if (h2s.length === 0) {
      this.onError?.(new Error("gRPC connections cannot be bounded with this grpc-js version"));
      return;
    }
    for (const h2 of h2s) {
      const handlers = h2.listeners("connection") as ((raw: Socket) => void)[];
      h2.removeAllListeners("connection");
      h2.on("connection", (raw: Socket) => {
        const address = raw.remoteAddress ?? "";
        const key = this.keyOf(raw);
        // A peer past its stream rate could open no stream on it: closed before TLS or HTTP/2 work.
        if (!this.streamsLeft(key, address)) {
          raw.destroy();
          this.onConnectionRefused?.(address || "unknown", "rate");
          return;
        }
        const { refused, shed, bound } = caps.admit(key, raw);
        if (refused) {
          raw.destroy();
          this.onConnectionRefused?.(address || "unknown", refused);
          return;
        }
        if (shed) {
          const from = shed.remoteAddress ?? "unknown";
          shed.destroy();
          this.onConnectionShed?.(address || "unknown", from, bound ?? "total");
        }
        const tuple = `${address}:${raw.remotePort}`;
        if (address) this.sockets.set(tuple, raw);
        raw.once("close", () => {
          caps.release(raw);
          if (this.sockets.get(tuple) === raw) this.sockets.delete(tuple);
        });
        for (const handle of handlers) handle.call(h2, raw);
      });
    }
  }

  /**
   * What a stream tells the connection bound of the TCP connection carrying it: its session
   * attested, or that attested session ended. Found by the call's peer ("address:port", one TCP
   * connection; grpc-js exposes no other way from a call to its socket); none when connections
   * are not bounded.
   */
  private carrierOf(call: grpc.ServerDuplexStream<Buffer, Buffer>): SessionCarrier | undefined {
    const caps = this.caps;
    const sock = caps && this.sockets.get(call.getPeer());
    if (!caps || !sock) return undefined;
    return { attested: () => caps.attested(sock), ended: () => caps.sessionEnded(sock) };
  }

  /**
   * A handshake refused by TLS never reaches a stream, so the kernel would not know it happened
   * (PROTOCOL §3.6: it leaves a rate-limited log line). grpc-js keeps its HTTP/2 servers private;
   * this reaches in, and says so once when it cannot (a test fails if a grpc-js update breaks it).
   */
  private watchTlsRefusals(servers: EventEmitter[]): void {
    if (servers.length === 0) {
      this.onError?.(new Error("refused TLS handshakes cannot be observed with this grpc-js version"));
      return;
    }
    // The address is read when the connection arrives: by the time TLS fails the socket is gone.
    const addresses = new WeakMap<object, string>();
    // Node gives a TLS handshake 120 s; a connection that has not finished it gets idleConnectionMs,
    // as one without a stream does after it (the idle limit starts only once HTTP/2 is set up).
    const unfinished = new Map<object, NodeJS.Timeout>();
    let timed = this.idleConnectionMs > 0;
    for (const h2 of servers) {
      h2.prependListener("connection", (raw: Socket) => {
        addresses.set(raw, raw.remoteAddress ?? "unknown");
        if (!timed) return;
        const timer = setTimeout(() => raw.destroy(), this.idleConnectionMs).unref();
        unfinished.set(raw, timer);
        raw.once("close", () => {
          clearTimeout(timer);
          unfinished.delete(raw);
        });
      });
      h2.on("secureConnection", (socket: TLSSocket & { _parent?: object }) => {
        const timer = socket._parent && unfinished.get(socket._parent);
        if (timer) {
          clearTimeout(timer);
          if (socket._parent) unfinished.delete(socket._parent);
        } else if (timed) {
          // Not the socket that connected (another Node): never cut a finished handshake; say so once.
          timed = false;
          for (const t of unfinished.values()) clearTimeout(t);
          unfinished.clear();
          this.onError?.(new Error("connections that do not finish TLS cannot be timed out with this Node version"));
        }
      });
      h2.on("tlsClientError", (err: Error, socket: TLSSocket & { _parent?: object }) => {
        const peer = socket.remoteAddress ?? (socket._parent && addresses.get(socket._parent)) ?? "unknown";
        this.onTlsRefused?.(peer, err.message);
      });
    }
  }

  /**
   * Stops accepting; open streams are drained by the kernel, then cut after `graceMs`. When it
   * resolves no connection is left open: grpc-js's shutdown closes each HTTP/2 session
   * gracefully, and a session destroyed after a graceful close only half-closes its socket and
   * waits for the peer's FIN; a peer that never sent one (or any byte: a connection with no
   * session) kept the stopped kernel's socket, and its process, open for ever.
   */
  async close(graceMs = 1000): Promise<void> {
    clearInterval(this.sweepTimer);
    clearInterval(this.watchTimer);
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    // A connection that carries no HTTP/2 session yet (TLS under way) will never carry a stream now.
    const carrying = new Set([...this.h2Connections.keys()].map((h) => tupleOf(h.socket)));
    for (const raw of this.connections) if (!carrying.has(tupleOf(raw))) raw.destroy();
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, graceMs);
      force.unref();
      server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
    for (const raw of this.connections) raw.destroy();
    this.connections.clear();
  }
}

/** Who a TCP connection's peer is, as read when it arrived. */
interface Peer {
  /** What its bounds count it under: {@link peerKey}'s, or a loopback peer's local user's. */
  key: string;
  /** Loopback only: the uid owning the peer's socket, or why it is unknown. */
  user?: number | string;
}

/** A client's HTTP/2 frame is at least its 9-byte header: no connection sent more streams than its bytes hold. */
const H2_FRAME_HEADER_BYTES = 9;

/**
 * Streams a connection sent that never reached the screen (HTTP/2 refused them itself). Client
 * stream ids are odd and rise, so the last one processed bounds how many were opened; but a
 * client may skip ids (RFC 9113 §5.1.1), and one HEADERS on stream 2^31-1 read as a billion
 * refused streams, charged to its peer. Each stream took a frame of at least 9 bytes: no more
 * are counted than the bytes the connection sent hold.
 */
export function unseenStreams(lastStreamId: number, bytesRead: number, screened: number): number {
  return Math.max(0, Math.min(Math.ceil(lastStreamId / 2), Math.floor(bytesRead / H2_FRAME_HEADER_BYTES)) - screened);
}

/** A TCP connection's peer as "address:port" (one connection, whether seen raw or under TLS). */
function tupleOf(socket: Socket | undefined): string {
  return `${socket?.remoteAddress}:${socket?.remotePort}`;
}

/**
 * Closes an HTTP/2 connection with GOAWAY ENHANCE_YOUR_CALM. Node takes a number as destroy's
 * first argument for the code (its typings do not say so); destroy(undefined, code) sent NO_ERROR.
 */
function closeCalm(session: Http2Session): void {
  (session.destroy as unknown as (code: number) => void).call(session, h2c.NGHTTP2_ENHANCE_YOUR_CALM);
}

/**
 * A header list's size as HTTP/2 counts it (SETTINGS_MAX_HEADER_LIST_SIZE: name, value and 32 per
 * field), from the raw fields Node passes with a stream (from the combined object otherwise).
 */
export function headerListBytes(raw: unknown, headers: IncomingHttpHeaders): number {
  let n = 0;
  if (Array.isArray(raw)) {
    for (let i = 0; i + 1 < raw.length; i += 2) n += String(raw[i]).length + String(raw[i + 1]).length + 32;
    return n;
  }
  for (const [k, v] of Object.entries(headers)) {
    for (const one of Array.isArray(v) ? v : [v]) n += k.length + String(one).length + 32;
  }
  return n;
}

/** The TCP connection under a gRPC stream, told when the stream's session attests and when that session ends. */
export interface SessionCarrier {
  attested(): void;
  ended(): void;
}

/**
 * Bytes a peer may send into a stream after its session ended before the stream is reset at
 * once (else at the grace): what a working client may have in flight when the end reaches it —
 * a stream window or two (64 KiB each, Node's default) — with room to spare.
 */
export const GRPC_BYTES_AFTER_END = 256 * 1024;

/** Bytes queued to a stream from which their all being taken is a drain (a socket's default high-water mark). */
const DRAIN_MARK = 16 * 1024;

/** One gRPC stream as a Connection; the writes of one event-loop turn go out as one message. */
export class GrpcStreamConnection implements Connection {
  readonly transport = "grpc";
  readonly peer: string;
  readonly clientCert: string | undefined;
  readonly peerKey: string | undefined;
  readonly localUser: number | string | undefined;
  private readonly out: TurnBatcher;
  private ended = false;
  private closed = false;
  /** This stream's session attested and the carrier was told (it is told once when the stream closes). */
  private holdsAttested = false;
  private readonly closeCbs: (() => void)[] = [];
  private readonly endCbs: (() => void)[] = [];
  private readonly refusedCbs: ((e: TransportRefusal) => void)[] = [];
  private readonly cut: PeerCloseCut;
  /** The HTTP/2 stream under the call (none: not screened), reset when the peer keeps it open after the session ended. */
  private readonly h2: ServerHttp2Stream | undefined;
  /** The HTTP/2 stream is closed both ways (or reset): nothing more comes from the peer. */
  private streamGone = false;
  /** The session is over (ended, refused, cut): what the peer still sends is not looked at. */
  private done = false;
  /** The stream's reset past the grace is set (once, whichever way the session ended). */
  private cutArmed = false;

  constructor(
    private readonly call: grpc.ServerDuplexStream<Buffer, Buffer>,
    /** Largest message sent; coalesced writes are split to stay within it (PROTOCOL §3.6). */
    private maxMessage: number,
    readonly tls = false,
    /** How long the call may take to finish after {@link end} (a peer that does not read holds it). */
    closeGraceMs = PEER_CLOSE_GRACE_MS,
    /** The connection bound's view of the TCP connection under this stream (none: not bounded). */
    private readonly carrier?: SessionCarrier,
    /**
     * The HTTP/2 stream under the call and grpc-js's receive limit on it: its message prefixes are
     * followed so that a message grpc-js refuses for its size is told to the session (none: not watched).
     */
    received?: { stream: ServerHttp2Stream; limit: number },
    /** Who the connection's peer is, as read when it arrived (none: not seen arriving). */
    from?: Peer,
  ) {
    this.peer = call.getPeer();
    this.peerKey = from?.key;
    this.localUser = from?.user;
    this.h2 = received?.stream;
    if (received) this.watchMessages(received.stream, received.limit);
    this.cut = new PeerCloseCut(this.transport, closeGraceMs);
    // mTLS: gRPC verified the certificate against the client CA; the kernel records which one it was.
    const raw = call.getAuthContext().sslPeerCertificate?.raw;
    this.clientCert = raw ? createHash("sha256").update(raw).digest("hex") : undefined;
    this.out = new TurnBatcher(
      (chunks) => {
        // Frames of one turn go out together, but never as a message over the limit: six 3 MiB
        // responses in one message broke the stream with RESOURCE_EXHAUSTED, unanswered.
        writeMessages(chunks, this.maxMessage, (m) => {
          this.queued += m.length;
          if (this.queued >= DRAIN_MARK) this.high = true;
          call.write(m, () => {
            this.queued -= m.length;
            if (this.high && this.queued === 0 && this.out.pending === 0 && !this.closed) {
              this.high = false;
              for (const cb of this.drainCbs) cb();
            }
          });
        });
        return false;
      },
      (fn) => process.nextTick(fn),
    );
    const closed = () => {
      if (this.closed) return;
      this.closed = true;
      this.done = true;
      this.out.stop();
      this.letGo();
      for (const cb of this.closeCbs) cb();
      // grpc-js may end a call itself (a `grpc-timeout` deadline passed, or one it cannot parse: its
      // own status) and leave the HTTP/2 stream open: a peer that never sent HELLO kept it for ever,
      // past handshakeTimeoutMs, and sent into it as fast as it liked. It is reset past the grace too.
      if (this.h2) this.armCut();
    };
    const gone = () => {
      this.streamGone = true;
      closed();
    };
    // The call's events say the session is over — its status sent ("finish"; "cancelled" and
    // "close" follow as grpc-js lets go of the call) — not that the peer's half is closed: only
    // the HTTP/2 stream's own close says that.
    for (const ev of ["error", "cancelled", "close", "finish"]) call.on(ev, this.h2 ? closed : gone);
    this.h2?.once("close", gone);
    call.on("end", () => {
      // The peer half-closed: it sends nothing more but still reads, so the session answers
      // what is in flight, says GOODBYE and ends the call with status OK (PROTOCOL §3.6).
      if (this.endCbs.length === 0) closed();
      for (const cb of this.endCbs) cb();
    });
  }

  /**
   * Bytes handed to gRPC and not yet taken by HTTP/2 (its write callback). The call's
   * `writableLength` counts messages (grpc-js streams are in object mode): a peer that did not
   * read looked like one message queued, was never dropped SLOW_CONSUMER, and the answer budget
   * never saw its backlog — gigabytes queued to it.
   */
  private queued = 0;
  /**
   * {@link queued} reached {@link DRAIN_MARK} since it was last empty: HTTP/2 taking all of it is
   * a drain. The call's own "drain" counts messages (object mode: 16), so a few large answers
   * taken never told the kernel (its counts of bytes queued unread, the event bus's pause).
   */
  private high = false;
  private readonly drainCbs: (() => void)[] = [];

  get buffered(): number {
    return this.out.pending + this.queued;
  }

  write(data: Uint8Array): void {
    if (this.closed || this.ended) return;
    this.out.write(data);
  }

  limitMessages(bytes: number): void {
    this.maxMessage = Math.min(this.maxMessage, bytes);
  }

  onEnd(cb: () => void): void {
    this.endCbs.push(cb);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.done = true;
    this.out.flushNow();
    if (!this.closed) this.call.end();
    this.armCut();
  }

  /**
   * A peer that never closes its side (or never reads the end) must not keep the stream (and the
   * kernel) alive, nor keep sending into a session that is over: grpc-js ends its half with the
   * status and keeps reading the other, and destroying the call does not reset the HTTP/2 stream.
   * Past the grace the stream is reset (RST_STREAM NO_ERROR: the answer is complete, RFC 9113
   * §8.1), unless the peer closed its half by then.
   */
  private armCut(): void {
    if (this.cutArmed) return;
    this.cutArmed = true;
    this.cut.arm(
      () => this.streamGone,
      () => {
        this.destroy();
        this.reset();
      },
    );
  }

  /** Resets the HTTP/2 stream: the peer sends nothing more on it (RST_STREAM NO_ERROR). */
  private reset(): void {
    if (this.streamGone) return;
    this.streamGone = true;
    if (this.h2 && !this.h2.destroyed) this.h2.close(h2c.NGHTTP2_NO_ERROR);
  }

  onCut(cb: (e: PeerCloseTimeout) => void): void {
    this.cut.onCut(cb);
  }

  destroy(): void {
    this.done = true;
    if (this.closed) return;
    this.closed = true;
    this.out.stop();
    // After end() the status (OK) is already on its way. A call abandoned without GOODBYE or a fatal
    // ERROR (a silent peer, a kill) still ends with a status, UNAVAILABLE, never left open (PROTOCOL §3.6).
    if (this.ended) this.call.destroy();
    else {
      this.call.emit("error", { code: grpc.status.UNAVAILABLE, details: "the kernel closed the session" });
      // The status goes out; the peer's half is reset after the grace if it keeps it open.
      this.armCut();
    }
    this.letGo();
    for (const cb of this.closeCbs) cb();
  }

  /** The session attested (WELCOME sent): the TCP connection under it is not shed while it lasts. */
  attested(): void {
    if (this.closed || this.holdsAttested) return;
    this.holdsAttested = true;
    this.carrier?.attested();
  }

  /** The stream closed: an attested session no longer keeps its connection. */
  private letGo(): void {
    if (!this.holdsAttested) return;
    this.holdsAttested = false;
    this.carrier?.ended();
  }

  onData(cb: (chunk: Uint8Array) => void): void {
    this.call.on("data", (chunk: Buffer) => {
      // A session that is over reads nothing more (its stream is reset past the grace).
      if (!this.done) cb(chunk);
    });
  }

  onRefused(cb: (e: TransportRefusal) => void): void {
    this.refusedCbs.push(cb);
  }

  /**
   * Follows the 5-byte prefixes of the messages on the HTTP/2 stream, and the frames they carry,
   * with a listener put before grpc-js's (neither starting the flow nor taking a byte), so that
   * what it refuses grpc-js never decodes: grpc-js splits each DATA frame into its messages at
   * once, a few microseconds each, however small.
   * - A message declaring more than grpc-js's limit: grpc-js ends the call with
   *   RESOURCE_EXHAUSTED and tells the handler only that it was cancelled, which the session
   *   recorded as a plain close. The session hears why first (PROTOCOL §3.6, TOO_LARGE).
   * - A frame cut into more small messages than {@link FragmentGauge} allows (a byte each, say):
   *   the stream is reset at once (RST_STREAM ENHANCE_YOUR_CALM), before grpc-js decodes the
   *   rest, and the session ends on it (PROTOCOL §3.6, FRAGMENTED).
   */
  private watchMessages(stream: ServerHttp2Stream, limit: number): void {
    if (stream.readableFlowing === null) return; // grpc-js does not read this stream
    const prefix = Buffer.alloc(5);
    let have = 0; // bytes of the current prefix
    let length = 0; // the current message's length
    let skip = 0; // bytes of the current message still to come
    const gauge = new FragmentGauge();
    let after = 0; // bytes the peer sent into a session that is over
    const onData = (chunk: Buffer) => {
      if (this.done) {
        // Nothing of it is looked at, but HTTP/2 still takes it at the peer's pace: one stream's
        // grace kept the kernel reading ~200 MB/s for an unauthenticated peer (a new stream a
        // second, each with a byte of garbage). Past what a working client has in flight when it
        // learns of the end, the stream is reset now rather than at the grace.
        after += chunk.length;
        if (after > GRPC_BYTES_AFTER_END) {
          stream.off("data", onData);
          this.destroy();
          this.reset();
        }
        return;
      }
      let i = 0;
      while (i < chunk.length) {
        if (skip > 0) {
          const n = Math.min(skip, chunk.length - i);
          gauge.bytes(chunk.subarray(i, i + n));
          skip -= n;
          i += n;
          if (skip === 0 && !gauge.endMessage(length)) return this.fragmented(stream);
          continue;
        }
        const n = Math.min(5 - have, chunk.length - i);
        chunk.copy(prefix, have, i, i + n);
        have += n;
        i += n;
        if (have < 5) return;
        have = 0;
        length = skip = prefix.readUInt32BE(1);
        if (skip > limit) {
          // Still watched: what the peer sends on into the refused call counts as after any end
          // (grpc-js reads on, its decoder refusing each chunk), and the rest of this chunk with it.
          this.refused(skip, limit);
          after = chunk.length - i;
          return;
        }
        if (length === 0 && !gauge.endMessage(0)) return this.fragmented(stream);
      }
    };
    // Before grpc-js's listener: a stream reset here is one grpc-js no longer reads (its check for a closed stream).
    stream.prependListener("data", onData);
  }

  /** grpc-js ended the call for a message of `declared` bytes: nothing more goes out on it; the session hears why. */
  private refused(declared: number, limit: number): void {
    if (this.closed || this.ended) return;
    this.ended = true;
    this.done = true;
    const e = new TransportMessageTooLarge(this.transport, declared, limit);
    for (const cb of this.refusedCbs) cb(e);
    this.armCut();
  }

  /** A frame came in too many small messages: the stream is reset now, and the session hears why. */
  private fragmented(stream: ServerHttp2Stream): void {
    if (this.done) return;
    this.done = true;
    this.ended = true;
    stream.close(h2c.NGHTTP2_ENHANCE_YOUR_CALM);
    this.streamGone = true;
    const e = new TransportFragmented(this.transport);
    for (const cb of this.refusedCbs) cb(e);
    this.destroy();
  }

  onClose(cb: () => void): void {
    this.closeCbs.push(cb);
  }

  onDrain(cb: () => void): void {
    this.drainCbs.push(cb);
  }
}
