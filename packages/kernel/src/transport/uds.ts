import { randomBytes } from "node:crypto";
import { chmodSync, linkSync, lstatSync, mkdirSync, statSync, unlinkSync } from "node:fs";
import net from "node:net";
import { dirname, join } from "node:path";
import { socketTurnBatcher, type TurnBatcher } from "@kpip/protocol";
import { startReading, stopReading } from "../read-switch.js";
import {
  type Connection,
  PEER_CLOSE_GRACE_MS,
  PeerCloseCut,
  type PeerCloseTimeout,
  type PeerProcess,
} from "../session/connection.js";
import { type PeerReader, peerReader } from "./peer-process.js";

/** The socket path or its directory is unsafe or taken; the kernel refuses to start. */
export class SocketPathError extends Error {
  override name = "SocketPathError";
}

/**
 * Prepares the socket directory (created 0700 if missing) and checks it: a real directory,
 * owned by this user, not writable by group or others. A path that exists must be a socket
 * (never a symlink or file) that no live kernel answers on; only then is it removed as stale.
 */
export async function prepareSocketPath(path: string): Promise<void> {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const d = lstatSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (!d.isDirectory()) throw new SocketPathError(`socket directory ${dir} is not a directory (symlinks are refused)`);
  if (d.uid !== uid) throw new SocketPathError(`socket directory ${dir} is owned by uid ${d.uid}, not by this user (${uid})`);
  if ((d.mode & 0o022) !== 0) {
    throw new SocketPathError(
      `socket directory ${dir} is writable by group or others (mode ${(d.mode & 0o777).toString(8)}); use a 0700 directory`,
    );
  }
  let st: ReturnType<typeof lstatSync> | undefined;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (st.isSymbolicLink()) throw new SocketPathError(`socket path ${path} is a symlink; refusing to use it`);
  if (!st.isSocket()) throw new SocketPathError(`socket path ${path} exists and is not a socket; refusing to replace it`);
  if (st.uid !== uid) throw new SocketPathError(`socket ${path} is owned by uid ${st.uid}, not by this user`);
  if (await answers(path)) throw new SocketPathError(`a kernel is already listening on ${path}`);
  unlinkSync(path);
}

/** Whether something accepts connections on the Unix socket at `path` (a running kernel). */
export function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    // EAGAIN: a kernel is there with its accept queue full (a connect storm), not a stale socket.
    s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code === "EAGAIN"));
  });
}

/** A Unix-socket listener handing each accepted socket over as a {@link Connection}. */
export class UdsListener {
  private server: net.Server | undefined;
  private ino: number | undefined;
  /** Listener errors after start (logged by the kernel). */
  onError: ((e: Error) => void) | undefined;
  /** Set by {@link listen} when peer processes cannot be read (the kernel says why once, at start). */
  peersUnknown: string | undefined;

  constructor(
    readonly path: string,
    private readonly accept: (c: Connection) => void,
  ) {}

  async listen(): Promise<void> {
    await prepareSocketPath(this.path);
    const peers = peerReader();
    this.peersUnknown = peers.reason;
    // The peer process is read when first asked for (the session's first HELLO), not at accept:
    // a connect flood the pre-authentication budget sheds, or connections that never say HELLO,
    // cost no read. SO_PEERCRED is fixed at connect() and the pidfd names the connecting process
    // whenever it is taken, so a later read is as true.
    const server = net.createServer({ noDelay: true } as net.ServerOpts, (sock) =>
      this.accept(new SocketConnection(sock, "uds", PEER_CLOSE_GRACE_MS, peers.read)),
    );
    // libuv unlinks the path a pipe server was bound to when it closes, even if another kernel
    // owns that path by then. So bind under a private name, publish it with link() (which, unlike
    // rename, fails if the path was taken meanwhile), and drop the private name: at close libuv
    // unlinks a name that is already gone, and we remove the public one only if it is still ours.
    const tmp = join(dirname(this.path), `.kpip-${process.pid.toString(36)}-${randomBytes(3).toString("hex")}`);
    const bindPath = Buffer.byteLength(tmp) <= 100 ? tmp : this.path;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      // A deep accept queue for connect storms (the kernel caps it at net.core.somaxconn).
      server.listen({ path: bindPath, backlog: 4096 }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    try {
      chmodSync(bindPath, 0o600);
      if (bindPath !== this.path) {
        linkSync(bindPath, this.path);
        unlinkSync(bindPath);
      }
    } catch (e) {
      server.close();
      const err = e as NodeJS.ErrnoException;
      throw err.code === "EEXIST"
        ? new SocketPathError(`socket path ${this.path} was taken while this kernel was starting`)
        : err;
    }
    this.ino = statSync(this.path).ino;
    // After listening, an accept failure (e.g. EMFILE under a connection flood) must not crash the kernel.
    server.on("error", (e) => this.onError?.(e));
    this.server = server;
  }

  /** Stops accepting and removes the socket file if it is still ours. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    // Stop accepting now; open sessions are drained by the kernel, not waited for here.
    server.close();
    try {
      if (statSync(this.path).ino === this.ino) unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/** A net.Socket as a Connection, coalescing the writes of one turn into one syscall. */
export class SocketConnection implements Connection {
  readonly peer: string;
  private readonly out: TurnBatcher;
  private readonly cut: PeerCloseCut;
  /** A {@link holdReads} in force. */
  private hold: NodeJS.Timeout | undefined;

  constructor(
    private readonly sock: net.Socket,
    readonly transport: string,
    /** How long the peer has to close its side after {@link end}. */
    closeGraceMs = PEER_CLOSE_GRACE_MS,
    /** Reads the Unix socket's peer process, or why it is unknown ({@link Connection.process}), once asked. */
    private readonly readPeer?: PeerReader,
  ) {
    this.peer = sock.remoteAddress ?? "local";
    this.cut = new PeerCloseCut(transport, closeGraceMs);
    sock.on("error", () => {
      // reported through close
    });
    sock.once("close", () => clearTimeout(this.hold));
    this.out = socketTurnBatcher(sock);
  }

  /** What {@link readPeer} said, once read. */
  private peerProcess: PeerProcess | string | undefined;

  /** The peer process, read at the first call (the descriptor is gone once the socket is destroyed). */
  get process(): PeerProcess | string | undefined {
    if (this.readPeer === undefined) return undefined;
    this.peerProcess ??= this.readPeer(this.sock);
    return this.peerProcess;
  }

  get buffered(): number {
    return this.out.pending + this.sock.writableLength;
  }

  get copiesWritesBelow(): number {
    return this.out.copyBelow;
  }

  write(data: Uint8Array): void {
    if (!this.sock.destroyed) this.out.write(data);
  }

  end(): void {
    this.out.flushNow();
    this.sock.end();
    // A peer that never closes its side must not keep the connection (and the kernel) alive.
    this.cut.arm(
      () => this.sock.destroyed,
      () => this.sock.destroy(),
    );
  }

  onCut(cb: (e: PeerCloseTimeout) => void): void {
    this.cut.onCut(cb);
  }

  destroy(): void {
    this.out.stop();
    this.sock.destroy();
  }

  onData(cb: (chunk: Uint8Array) => void): void {
    this.sock.on("data", cb);
  }

  /**
   * Stops the socket's reads from the OS for `ms`, not only its 'data' events (a paused socket
   * goes on reading into its buffer), as the sandbox's output throttle does. A hold in force is
   * not extended.
   */
  holdReads(ms: number): void {
    if (this.hold || this.sock.destroyed) return;
    this.sock.pause();
    stopReading(this.sock);
    this.hold = setTimeout(() => {
      this.hold = undefined;
      if (this.sock.destroyed) return;
      startReading(this.sock);
      this.sock.resume();
    }, ms);
    this.hold.unref();
  }

  onClose(cb: () => void): void {
    this.sock.once("close", cb);
  }

  onDrain(cb: () => void): void {
    this.sock.on("drain", cb);
  }
}
