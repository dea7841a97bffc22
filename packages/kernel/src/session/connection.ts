import { type ByteChannel, HEADER_SIZE, MessageType } from "@kpip/protocol";

/**
 * How long a peer has to close its side once the kernel ended the connection (a fatal ERROR,
 * GOODBYE, a stop): past it the kernel cuts the connection (PROTOCOL §10: one second). A peer
 * that never closes its side must not keep a descriptor or a gRPC stream (and the kernel's
 * stop) alive.
 */
export const PEER_CLOSE_GRACE_MS = 1000;

/** The kernel ended a connection and the peer kept its side open past the grace: the connection was cut. */
export class PeerCloseTimeout extends Error {
  override name = "PeerCloseTimeout";
  constructor(
    readonly transport: string,
    readonly graceMs: number,
  ) {
    super(`the peer kept its side of the ${transport} connection open ${graceMs} ms after the kernel ended it: cut`);
  }
}

/**
 * The transport itself refused what the peer sent and ended the stream (gRPC: a message declaring
 * more than its size limit, ended RESOURCE_EXHAUSTED by grpc-js at its 5-byte prefix, PROTOCOL
 * §3.6). The session records it as the fatal PROTOCOL error TOO_LARGE, as it does a frame over
 * its limit on the socket; nothing more can be sent on the stream.
 */
export class TransportMessageTooLarge extends Error {
  override name = "TransportMessageTooLarge";
  readonly errorClass = "PROTOCOL" as const;
  readonly code = "TOO_LARGE";
  constructor(
    readonly transport: string,
    /** What the message's prefix declared. */
    readonly declared: number,
    readonly limit: number,
  ) {
    super(`a ${transport} message of ${declared} bytes is over the transport's limit of ${limit} bytes; the stream was ended`);
  }
}

/**
 * The transport refused how the peer cut its frames into messages and ends the session (gRPC: a
 * frame sent in more than {@link MAX_FRAGMENTS_PER_FRAME} small pieces, PROTOCOL §3.6). Unlike
 * {@link TransportMessageTooLarge} the stream is still open: the session says why in a fatal
 * ERROR, as for any frame it refuses.
 */
export class TransportFragmented extends Error {
  override name = "TransportFragmented";
  readonly errorClass = "PROTOCOL" as const;
  readonly code = "FRAGMENTED";
  constructor(readonly transport: string) {
    super(
      `a frame came in more than ${MAX_FRAGMENTS_PER_FRAME} ${transport} messages of fewer than ${MIN_FRAGMENT_BYTES} bytes that end inside it; the session was ended`,
    );
  }
}

/** What a transport refused of what the peer sent (the session ends on it with its class and code). */
export type TransportRefusal = TransportMessageTooLarge | TransportFragmented;

/** Types of the control frames (PROTOCOL §6.1: PING, PONG, GOODBYE, ERROR), whose end takes one off a fragment count, not all. */
const CONTROL_TYPES: ReadonlySet<number> = new Set([MessageType.PING, MessageType.PONG, MessageType.GOODBYE, MessageType.ERROR]);

/** A transport message shorter than this that ends inside a frame is a fragment of it (PROTOCOL §3.6). */
export const MIN_FRAGMENT_BYTES = 4096;
/** Fragments one frame may come in (a sender that writes a frame's header and body apart makes one). */
export const MAX_FRAGMENTS_PER_FRAME = 8;

/**
 * Follows the frame boundaries of a byte stream that arrives in transport messages (gRPC), and
 * counts the messages that carry little without ending a frame: each costs the transport (grpc-js)
 * a few microseconds whatever its size, so a frame of 1 MiB sent a byte per message cost the
 * kernel's thread seconds — before any attestation. A frame may come in at most
 * {@link MAX_FRAGMENTS_PER_FRAME} such messages (an empty message counts too); pieces of
 * {@link MIN_FRAGMENT_BYTES} or more, and messages whose last byte ends a frame, are not counted.
 * Only the end of a frame the kernel pays for (HELLO, ATTEST, REQUEST: bounded and on the
 * record) starts the count again; a control frame's (PING, PONG, GOODBYE, ERROR) takes one off
 * it (its header and body sent apart cost nothing), or a PING in 8 messages would be 8 a PING
 * for ever; as the socket's ReadGauge rules too.
 * The frames' own checks are the session's.
 */
export class FragmentGauge {
  private readonly header = Buffer.alloc(HEADER_SIZE);
  /** Header bytes of the current frame received so far. */
  private have = 0;
  /** Body bytes of the current frame still to come. */
  private body = 0;
  /** Fragments of the current frame. */
  private fragments = 0;
  /** The last byte taken ended a frame. */
  private endedFrame = false;

  /** Takes bytes of the current message, in order. */
  bytes(b: Uint8Array): void {
    let i = 0;
    while (i < b.length) {
      if (this.body > 0) {
        const n = Math.min(this.body, b.length - i);
        this.body -= n;
        i += n;
        if (this.body === 0) this.frameEnded();
        else this.endedFrame = false;
        continue;
      }
      const n = Math.min(HEADER_SIZE - this.have, b.length - i);
      this.header.set(b.subarray(i, i + n), this.have);
      this.have += n;
      i += n;
      this.endedFrame = false;
      if (this.have === HEADER_SIZE) {
        this.have = 0;
        // The body's length, the header's last 4 bytes (PROTOCOL §4.1).
        this.body = this.header.readUInt32BE(HEADER_SIZE - 4);
        if (this.body === 0) this.frameEnded();
      }
    }
  }

  private frameEnded(): void {
    // The header still holds the ended frame's: its type byte (PROTOCOL §4.1).
    if (!CONTROL_TYPES.has(this.header[3] as number)) this.fragments = 0;
    else if (this.fragments > 0) this.fragments--;
    this.endedFrame = true;
  }

  /** A message of `length` bytes (all given to {@link bytes}) ended; false when it is one fragment too many of its frame. */
  endMessage(length: number): boolean {
    const ended = this.endedFrame && length > 0;
    this.endedFrame = false;
    if (ended || length >= MIN_FRAGMENT_BYTES) return true;
    return ++this.fragments <= MAX_FRAGMENTS_PER_FRAME;
  }
}

/**
 * A transport's cut of a connection whose peer keeps its side open after the kernel ended it:
 * {@link arm} at the end, and past the grace the connection is cut and {@link Connection.onCut}'s
 * callbacks hear why.
 */
export class PeerCloseCut {
  private readonly cbs: ((e: PeerCloseTimeout) => void)[] = [];

  constructor(
    private readonly transport: string,
    private readonly graceMs = PEER_CLOSE_GRACE_MS,
  ) {}

  /** Past the grace, unless `closed()` by then, runs `cut` and tells the callbacks. The timer holds no process open. */
  arm(closed: () => boolean, cut: () => void): void {
    setTimeout(() => {
      if (closed()) return; // closed in time
      cut();
      const e = new PeerCloseTimeout(this.transport, this.graceMs);
      for (const cb of this.cbs) cb(e);
    }, this.graceMs).unref();
  }

  onCut(cb: (e: PeerCloseTimeout) => void): void {
    this.cbs.push(cb);
  }
}

/**
 * A transport-neutral byte stream carrying KPIP frames, as the kernel sees it: the protocol's
 * {@link ByteChannel} (the client's channels are the same interface) plus what the kernel needs
 * for flow control. Every transport (Unix socket, gRPC, in-memory) adapts to this, so
 * everything above the frame layer is shared code.
 */
export interface Connection extends ByteChannel {
  /** Who is on the other end, for logs. */
  readonly peer: string;
  /** Bytes queued but not yet taken by the peer (slow-consumer detection). */
  readonly buffered: number;
  /** Called when queued bytes have been taken by the peer (after `buffered` was high). */
  onDrain(cb: () => void): void;
  /**
   * The peer ended its half of the stream but still reads (a gRPC half-close): the session
   * ends as after GOODBYE. Transports without half-close report a plain close instead.
   */
  onEnd?(cb: () => void): void;
  /**
   * The kernel ended the connection and the peer did not close its side within
   * {@link PEER_CLOSE_GRACE_MS}: the transport cut it (the session logs why). Transports that
   * cannot be held open by a peer (in-memory) never report it.
   */
  onCut?(cb: (e: PeerCloseTimeout) => void): void;
  /**
   * The transport refused what the peer sent, before any frame of it reached the session: it
   * ended the stream itself (gRPC: a message over its size limit; what the session writes after
   * is dropped), or the session is to end it (gRPC: a frame in too many small messages). Called
   * before the close, so the session records why it ended.
   */
  onRefused?(cb: (e: TransportRefusal) => void): void;
  /**
   * The session on this connection attested (WELCOME sent). gRPC: its TCP connection is not shed
   * for a newer one while the stream lasts (PROTOCOL §8.8).
   */
  attested?(): void;
  /**
   * Stops reading from the peer for `ms` (what it sends meanwhile waits in the OS, read whole
   * after): the session's ReadGauge found it making reads that bring nothing. Transports
   * whose reads the peer cannot make small at will lack it (gRPC bounds its messages itself:
   * {@link FragmentGauge}; in-memory).
   */
  holdReads?(ms: number): void;
  /** The largest transport message to send from now on (gRPC: one frame at the session's maxBody). */
  limitMessages?(bytes: number): void;
  /**
   * The Unix socket: the process that connected (SO_PEERCRED, read when first asked for — the
   * session's first HELLO — and kept), or why it is unknown (a short reason). Absent on
   * transports with no peer process to name.
   */
  readonly process?: PeerProcess | string;
  /**
   * gRPC: the key the transport counted the peer's connection under (session/peer-key.ts; a
   * loopback peer's is its local user's), for the bounds per peer before authentication.
   */
  readonly peerKey?: string;
  /**
   * gRPC from loopback: the uid owning the peer's socket (Linux's sock_diag, read as the
   * connection arrived), or why it is unknown. Absent for peers on other hosts.
   */
  readonly localUser?: number | string;
  /** gRPC: whether the stream is carried over TLS. */
  readonly tls?: boolean;
  /** gRPC with mTLS: the SHA-256 of the client certificate's DER bytes, lowercase hex (recorded, never an identity). */
  readonly clientCert?: string;
}

/**
 * The process at the other end of a Unix-socket connection, as the OS took it at connect()
 * (SO_PEERCRED; transport/peer-process.ts reads it): never claimed by the peer. It names the
 * process that connected, not one handed the socket afterwards (fork, SCM_RIGHTS).
 */
export type PeerProcess = {
  /** 0 when the peer is in a pid namespace the kernel cannot see. */
  pid: number;
  uid: number;
  gid: number;
  /**
   * The process's start, clock ticks after boot (/proc/<pid>/stat field 22): with the pid, one
   * process for the boot. Absent unless a pidfd showed the process still alive after the read
   * (Linux 6.5+): a pid read later may already name another process.
   */
  start?: number;
};

/** Where a session comes from, as its audit records state it (PROTOCOL §3.6, docs/audit.md). */
export interface ConnectionOrigin {
  transport: string;
  /** The peer's "address:port" on transports that know one (gRPC); absent on the others ({@link hasAddress}). */
  peer?: string;
  /** The Unix socket: the peer process, or null when it is unknown (`processUnknown` says why). */
  process?: PeerProcess | null;
  processUnknown?: string;
  /** gRPC from loopback: the local user owning the peer's socket, or null when unknown (`localUserUnknown` says why). */
  localUser?: { uid: number } | null;
  localUserUnknown?: string;
  tls?: boolean;
  clientCert?: string;
}

/**
 * Whether the transport knows the peer's network address. Not the Unix socket (its peer is a
 * process: {@link PeerProcess}), in-memory, nor an agent's connection: a socketpair the kernel made at
 * its spawn, whose session's persona is the agent's own (the agent.spawned record names it). An
 * agent's "local" address was recorded as `peer`, and counted all agents' handshakes as one
 * peer's for the pre-authentication bound per peer, which is for gRPC.
 */
function hasAddress(transport: string): boolean {
  return transport !== "uds" && transport !== "memory" && transport !== "agent";
}

export function originOf(conn: Connection): ConnectionOrigin {
  return {
    transport: conn.transport,
    ...(hasAddress(conn.transport) ? { peer: conn.peer.replace(/^ipv[46]:/, "") } : {}),
    ...(conn.process === undefined
      ? {}
      : typeof conn.process === "string"
        ? { process: null, processUnknown: conn.process }
        : { process: conn.process }),
    ...(conn.localUser === undefined
      ? {}
      : typeof conn.localUser === "string"
        ? { localUser: null, localUserUnknown: conn.localUser }
        : { localUser: { uid: conn.localUser } }),
    ...(conn.tls !== undefined ? { tls: conn.tls } : {}),
    ...(conn.clientCert !== undefined ? { clientCert: conn.clientCert } : {}),
  };
}

/** The address part of a transport's peer name: "ipv4:127.0.0.1:5000" → "127.0.0.1"; "" when there is none. */
export function addressOf(conn: Connection): string {
  if (!hasAddress(conn.transport)) return "";
  const p = conn.peer.replace(/^ipv[46]:/, "");
  const m = /^\[?([^\]]*?)\]?:\d+$/.exec(p);
  return m ? (m[1] as string) : p;
}
