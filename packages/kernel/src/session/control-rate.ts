import { BURST_SECONDS, type Bucket, refill } from "../audit/rate-buckets.js";

/** Control frames a session may send per second by default (the `controlFrameRate` setting); bursts {@link BURST_SECONDS}× this. */
export const CONTROL_FRAME_RATE = 100;

/**
 * A session's control frames after WELCOME — PING, PONG, GOODBYE and a non-fatal ERROR, every
 * frame but a REQUEST — are answered (a PONG) or ignored without a record, at whatever rate the
 * peer writes: one persona, even without a token, sent ~550,000 PINGs a second and held the
 * kernel's thread, every other session's request waiting behind a read of 3,000 of them. An
 * honest peer sends a few a second (a PING and a PONG per half heartbeat, at least 50 ms), so a
 * token bucket per session bounds them; past it the session ends (the caller's fatal RESOURCE
 * error), and its next one costs a session open, bounded and on the record. Requests do not
 * pass here: their own bounds (in flight, a token's rate, refusals) and records hold them.
 * O(1) per control frame, no system call: the time is the read's.
 */
export class ControlRate {
  private readonly bucket: Bucket;

  constructor(
    private readonly rate: number,
    now: number,
  ) {
    this.bucket = { tokens: rate * BURST_SECONDS, at: now };
  }

  /** One control frame received at `now`: false once the session is past its rate (0: no bound). */
  take(now: number): boolean {
    if (this.rate === 0) return true;
    refill(this.bucket, this.rate, now);
    if (this.bucket.tokens < 1) return false;
    this.bucket.tokens--;
    return true;
  }

  /** Why the session ended, for its ERROR and record. */
  get message(): string {
    return `the peer sent control frames (PING, PONG, GOODBYE, ERROR) faster than controlFrameRate ${this.rate}/s (bursts ${this.rate * BURST_SECONDS}); session ended`;
  }
}
