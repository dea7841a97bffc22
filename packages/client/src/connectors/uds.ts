import net from "node:net";
import { socketTurnBatcher, type TurnBatcher } from "@kpip/protocol";
import { KernelUnavailableError, type UntrustedSocketError } from "../errors.js";
import type { Channel, Connector } from "./connector.js";
import { untrustedSocket } from "./socket-trust.js";

/** How long a connect keeps retrying while the kernel's listen queue is full (at most; the caller's deadline may be sooner). */
const BUSY_WAIT_MS = 5000;

/**
 * Connects over a Unix domain socket (the default transport). EAGAIN means the kernel is
 * there but its listen queue is full (a connect storm): that is retried with backoff for a
 * few seconds, while "no such socket" or "refused" fail at once.
 */
export class UdsConnector implements Connector {
  readonly transport = "uds";
  constructor(
    readonly address: string,
    /** How a socket is dialled (tests substitute one). */
    private readonly dial: (path: string) => net.Socket = (path) => net.connect(path),
  ) {}

  async connect(deadline?: number): Promise<Channel> {
    const until = Math.min(Date.now() + BUSY_WAIT_MS, deadline ?? Number.POSITIVE_INFINITY);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once();
      } catch (e) {
        const code = ((e as KernelUnavailableError).cause as NodeJS.ErrnoException | undefined)?.code;
        if (code !== "EAGAIN" || Date.now() >= until) throw e;
        const delay = Math.min(100, 2 ** attempt) * (0.5 + Math.random());
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  private once(): Promise<Channel> {
    return new Promise((resolve, reject) => {
      const untrusted = untrustedPath(this.address);
      if (untrusted) return reject(untrusted);
      const sock = this.dial(this.address);
      sock.setNoDelay(true);
      sock.once("connect", () => {
        sock.removeAllListeners("error");
        resolve(new SocketChannel(sock, this.transport));
      });
      sock.once("error", (e: NodeJS.ErrnoException) => {
        reject(
          new KernelUnavailableError(
            e.code === "EAGAIN"
              ? `the kernel at ${this.address} is not accepting connections (its listen queue stayed full)`
              : `no kernel at ${this.address} (${e.code ?? e.message}) — is a kernel running, and is this its socket?`,
            { cause: e },
          ),
        );
      });
    });
  }
}

/**
 * Why the socket at `path` is not to be trusted (socket-trust.ts): checked again at each
 * reconnect, so a socket swapped under a running client is refused too. Root reaches every
 * user's kernel and is not checked.
 */
function untrustedPath(path: string): UntrustedSocketError | KernelUnavailableError | undefined {
  const me = process.geteuid?.();
  if (me === undefined || me === 0) return undefined;
  return untrustedSocket(path, me);
}

/**
 * The connection an agent inherited from the kernel that started it (a socket pair end on a
 * descriptor): a sandboxed agent has no other way to the kernel. It can be used once; after
 * it closes there is nothing to reconnect to.
 */
export class InheritedConnector implements Connector {
  readonly transport = "agent";
  readonly redials = false;
  private used = false;
  constructor(readonly fd: number) {}

  get address(): string {
    return `inherited descriptor ${this.fd}`;
  }

  async connect(): Promise<Channel> {
    if (this.used) throw new KernelUnavailableError(`the connection inherited on descriptor ${this.fd} has closed`);
    this.used = true;
    const sock = new net.Socket({ fd: this.fd, readable: true, writable: true });
    sock.setNoDelay(true);
    return new SocketChannel(sock, this.transport);
  }
}

/** A socket as a channel: the writes of one turn go out corked, as one syscall. */
class SocketChannel implements Channel {
  private readonly out: TurnBatcher;
  constructor(
    private readonly sock: net.Socket,
    readonly transport: string,
  ) {
    sock.on("error", () => {});
    this.out = socketTurnBatcher(sock);
  }
  write(data: Uint8Array): void {
    if (!this.sock.destroyed) this.out.write(data);
  }
  afterWrites(cb: () => void): void {
    this.out.afterWrites(cb);
  }
  unsent(): number {
    return this.out.pending + this.sock.writableLength;
  }
  end(): void {
    this.out.flushNow();
    this.sock.end();
  }
  destroy(): void {
    this.out.stop();
    this.sock.destroy();
  }
  onData(cb: (chunk: Uint8Array) => void): void {
    this.sock.on("data", cb);
  }
  onClose(cb: (err?: Error) => void): void {
    this.sock.once("close", () => cb());
  }
}
