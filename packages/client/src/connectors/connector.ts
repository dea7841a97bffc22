import type { ByteChannel } from "@kpip/protocol";

/** A byte stream to a kernel, as every connector provides it (the protocol's {@link ByteChannel}). */
export type Channel = ByteChannel;

/** Opens channels to one kernel endpoint; the client retries through it on reconnect. */
export interface Connector {
  readonly transport: string;
  /**
   * False when {@link connect} works once only (an agent's inherited descriptor): a handshake the
   * kernel refused, or that closed, cannot be tried again, and its error is final. Default true.
   */
  readonly redials?: boolean;
  /** Human-readable endpoint, for errors. */
  readonly address: string;
  /**
   * Opens a channel. `deadline` (epoch ms), when given, bounds any waiting the connector does on
   * its own (e.g. a Unix socket whose accept queue is full); a connector may ignore it.
   */
  connect(deadline?: number): Promise<Channel>;
}
