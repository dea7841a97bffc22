import { HANDSHAKE_RETRY_CODES, KpipError } from "@kpip/protocol";
import { backoffDelay } from "./backoff.js";
import { HandshakeClosedError, KernelUnavailableError, TimeoutError } from "./errors.js";
import type { ResolvedOptions } from "./options.js";

/** What the dialer asks of the client: one attempt, and whether to keep going. */
export interface DialHost {
  /** One attempt: connect, handshake, attest; resolves when the session is ready. */
  establish(timeoutMs: number): Promise<void>;
  /** In the reconnecting state (a reconnect is due)? */
  reconnecting(): boolean;
  /** The client closed: stop dialling. */
  closed(): boolean;
  /** Between attempts (the state goes back to connecting or reconnecting). */
  retrying(first: boolean): void;
  /** A reconnect attempt failed (reported as the client's `reconnectFailed` event). */
  failed(e: unknown): void;
  /** Retrying cannot help (e.g. the persona may no longer attest). */
  giveUp(e: Error): void;
}

/** Resolves after `ms`, or at once when `signal` aborts (the client closed: its process must not wait out a backoff). */
const pause = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });

/**
 * Connection attempts with full-jitter backoff: the first connect (within connectTimeoutMs,
 * waiting for a kernel that is not up yet when asked), and reconnects after a link is lost.
 * The backoff resets only after a connection stayed up healthyAfterMs, so a flapping kernel
 * is not hammered.
 */
export class Dialer {
  private attempt = 0;
  private healthy: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  /** Aborted by {@link stop}: a backoff under way ends at once. */
  private readonly stopped = new AbortController();

  constructor(
    private readonly o: ResolvedOptions,
    private readonly host: DialHost,
  ) {}

  /**
   * The first connection; throws what the last attempt threw — or, when time ran out on an
   * attempt after a refusal that was being retried, that refusal (the kernel's typed answer says
   * more than a timeout of the few milliseconds left).
   */
  async first(): Promise<void> {
    const until = Date.now() + this.o.connectTimeoutMs;
    let refused: unknown;
    for (;;) {
      try {
        return await this.host.establish(Math.max(1, until - Date.now()));
      } catch (e) {
        // A handshake the kernel shed to make room under a connection flood, or refused because the
        // persona's tree opened sessions too fast (PROTOCOL §8.8), is tried again within the
        // connect timeout, like a kernel that is not up yet.
        const shed =
          (e instanceof KpipError && e.code !== undefined && HANDSHAKE_RETRY_CODES.has(e.code)) ||
          // A kernel that sheds a connection before it attested (gRPC at its connection bound) just closes it.
          e instanceof HandshakeClosedError;
        const absent = this.o.waitForKernel && e instanceof KernelUnavailableError;
        if (Date.now() >= until) throw refused !== undefined && e instanceof TimeoutError ? refused : e;
        // A connection that cannot be made again (an agent's inherited descriptor): the kernel's answer is final.
        if (!(absent || shed) || this.o.connector.redials === false) throw e;
        refused = e;
        this.host.retrying(true);
        await pause(Math.min(backoffDelay(this.o.reconnectBackoff, this.attempt++), until - Date.now()), this.stopped.signal);
        if (this.host.closed()) throw e;
      }
    }
  }

  /** Reconnects until a link is ready or the client stops reconnecting; one loop at a time. */
  again(): Promise<void> {
    this.loop ??= this.reconnectLoop().finally(() => {
      this.loop = undefined;
    });
    return this.loop;
  }

  /** A link became ready: only one that stays up resets the backoff. */
  connected(): void {
    clearTimeout(this.healthy);
    this.healthy = setTimeout(() => {
      this.attempt = 0;
    }, this.o.healthyAfterMs);
    this.healthy.unref();
  }

  stop(): void {
    clearTimeout(this.healthy);
    this.stopped.abort();
  }

  private async reconnectLoop(): Promise<void> {
    while (this.host.reconnecting()) {
      await pause(backoffDelay(this.o.reconnectBackoff, this.attempt++), this.stopped.signal);
      if (!this.host.reconnecting()) break;
      try {
        await this.host.establish(this.o.connectTimeoutMs);
      } catch (e) {
        // Closed meanwhile (the attempt ended with it): nothing failed that anyone waits on.
        if (this.host.closed()) break;
        this.host.failed(e);
        if ((e instanceof KpipError && e.errorClass === "AUTH") || isBug(e)) {
          // Refused attestation (the persona was removed or its key changed), or a programming
          // error (in a connector, in this client): retrying cannot help, and an endless
          // "reconnecting" would hide it; the client ends with it, given to every waiting call.
          this.host.giveUp(e);
          break;
        }
        this.host.retrying(false);
      }
    }
  }
}

/** JavaScript's own errors for code that is wrong, never for a kernel or a network that is away. */
function isBug(e: unknown): e is Error {
  return e instanceof TypeError || e instanceof ReferenceError || e instanceof RangeError || e instanceof SyntaxError;
}
