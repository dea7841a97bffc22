import net from "node:net";
import { KernelUnavailableError } from "../errors.js";
import type { Channel, Connector } from "./connector.js";

/** Connects over a Unix domain socket (the default transport). */
export class UdsConnector implements Connector {
  readonly transport = "uds";
  constructor(readonly address: string) {}

  connect(): Promise<Channel> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(this.address);
      sock.setNoDelay(true);
      sock.once("connect", () => {
        sock.removeAllListeners("error");
        resolve(new SocketChannel(sock, this.transport));
      });
      sock.once("error", (e: NodeJS.ErrnoException) => {
        reject(
          new KernelUnavailableError(
            `no kernel at ${this.address} (${e.code ?? e.message}) — start one with \`npm start\` or pass the right socket`,
            { cause: e },
          ),
        );
      });
    });
  }
}

class SocketChannel implements Channel {
  private corked = false;
  constructor(
    private readonly sock: net.Socket,
    readonly transport: string,
  ) {
    sock.on("error", () => {});
  }
  write(data: Uint8Array): void {
    if (this.sock.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      process.nextTick(() => {
        this.corked = false;
        this.sock.uncork();
      });
    }
    this.sock.write(data);
  }
  end(): void {
    this.sock.end();
  }
  destroy(): void {
    this.sock.destroy();
  }
  onData(cb: (chunk: Uint8Array) => void): void {
    this.sock.on("data", cb);
  }
  onClose(cb: (err?: Error) => void): void {
    this.sock.once("close", () => cb());
  }
}
