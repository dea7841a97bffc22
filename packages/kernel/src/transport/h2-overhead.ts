/**
 * What an HTTP/2 connection's peer sends that carries nothing: WINDOW_UPDATE, PRIORITY, PING,
 * SETTINGS, RST_STREAM on closed streams, frame headers, padding. Node and nghttp2 handle them
 * without telling JavaScript; a loop of WINDOW_UPDATE or PRIORITY frames on one connection
 * (~200 MB/s on loopback) kept the kernel at 0.8–0.9 core and a gRPC client's calls at 10×
 * their latency, for as long as the peer liked. A connection earns a budget for such bytes:
 * a base rate, what its streams carried in (messages and header lists, which cost their own
 * bounds) and a share of what the kernel sent it (a client acknowledges what it receives with
 * WINDOW_UPDATE, some with PING). A working client spends a small part of it: the frame
 * headers of its messages, a WINDOW_UPDATE per 32 KiB it reads.
 */

/** Overhead bytes a connection earns a second whatever it carries (SETTINGS, PING, HEADERS of few streams). */
export const GRPC_OVERHEAD_BYTES_PER_SECOND = 64 * 1024;
/** The most overhead bytes a connection holds unspent, and holds at its start: what it may spend at once. */
export const GRPC_OVERHEAD_BURST_BYTES = 1024 * 1024;
/**
 * Of the bytes the kernel sent on a connection, the share its peer earns for overhead. Below 1,
 * so that frames the kernel answers in kind (PING, SETTINGS: an acknowledgement the same size)
 * do not pay for themselves.
 */
export const GRPC_OVERHEAD_SENT_SHARE = 1 / 8;
/**
 * Overhead bytes charged as one stream to the peer's stream rate when a connection is closed
 * for them: about what a stream costs the kernel (~150 µs of CPU; nghttp2 takes ~4 ns a byte
 * of WINDOW_UPDATE or PRIORITY frames).
 */
export const GRPC_OVERHEAD_BYTES_PER_STREAM = 32 * 1024;

/** One HTTP/2 connection's overhead budget, looked at now and then with the socket's byte counts. */
export class OverheadBudget {
  /** Overhead bytes the connection may still spend; below 0 it spent more than it earned. */
  budget = GRPC_OVERHEAD_BURST_BYTES;
  /** Overhead bytes spent in all (for the log). */
  spent = 0;
  private read = 0;
  private written = 0;
  private carried = 0;

  constructor(private at: number) {}

  /**
   * The connection's peer sent `read` bytes in all, of which `carried` reached a stream (message
   * bytes and header lists), and the kernel sent it `written`: the budget after what it earned
   * and spent since the last look.
   */
  look(now: number, read: number, written: number, carried: number): number {
    const spent = read - this.read - (carried - this.carried);
    const earned =
      (Math.max(0, now - this.at) / 1000) * GRPC_OVERHEAD_BYTES_PER_SECOND + (written - this.written) * GRPC_OVERHEAD_SENT_SHARE;
    this.at = now;
    this.read = read;
    this.written = written;
    this.carried = carried;
    if (spent > 0) this.spent += spent;
    this.budget = Math.min(GRPC_OVERHEAD_BURST_BYTES, this.budget + earned - spent);
    return this.budget;
  }
}
