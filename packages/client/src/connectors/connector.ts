/** A byte stream to a kernel, as every connector provides it. */
export interface Channel {
  readonly transport: string;
  /** Queues bytes; writes made in one event-loop turn go out together. */
  write(data: Uint8Array): void;
  end(): void;
  destroy(): void;
  onData(cb: (chunk: Uint8Array) => void): void;
  onClose(cb: (err?: Error) => void): void;
}

/** Opens channels to one kernel endpoint; the client retries through it on reconnect. */
export interface Connector {
  readonly transport: string;
  /** Human-readable endpoint, for errors. */
  readonly address: string;
  /**
   * Opens a channel. `deadline` (epoch ms), when given, bounds any waiting the connector does on
   * its own (e.g. a Unix socket whose accept queue is full); a connector may ignore it.
   */
  connect(deadline?: number): Promise<Channel>;
}
