import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";

/** Default bound on one host session's calls in flight (GatewayOptions.maxCallsPerSession). */
export const DEFAULT_MAX_CALLS_PER_SESSION = 16;
/** Default bound on one host session's answers prepared but not yet delivered, in bytes. */
export const DEFAULT_MAX_UNREAD_BYTES_PER_SESSION = 64 * 1024 * 1024;
/** Default bound on calls in flight across all host sessions (GatewayOptions.maxTotalCalls). */
export const DEFAULT_MAX_TOTAL_CALLS = 256;
/** Default bound on undelivered answer bytes across all host sessions (GatewayOptions.maxTotalUnreadBytes). */
export const DEFAULT_MAX_TOTAL_UNREAD_BYTES = 256 * 1024 * 1024;

/**
 * Default bound on the subscriptions one host session holds (GatewayOptions.maxSubscriptionsPerHost):
 * every host's resources/subscribe shares the gateway's one kernel session, whose default
 * bound is 256 (`maxSubscriptionsPerSession`); one host session may take an eighth of it.
 */
export const DEFAULT_MAX_SUBSCRIPTIONS_PER_HOST = 32;

/**
 * The MCP error of a call refused because its host session is at a bound: retryable once the
 * host has read its answers (JSON-RPC leaves -32000..-32099 to servers; -32029 echoes HTTP 429).
 */
export const HOST_BUSY = -32029;

type RequestId = string | number;

/** What one host session holds now (for tests and logs). */
export interface HostLoad {
  /** Calls whose handler is still running. */
  calls: number;
  /** Bytes of answers handed to the transport and not yet delivered to the host. */
  unreadBytes: number;
  /** Calls run so far, and calls refused at a bound. */
  served: number;
  refused: number;
}

/** What all host sessions hold together now (for tests and logs). */
export interface GatewayLoad {
  calls: number;
  unreadBytes: number;
  /** Calls refused because the gateway as a whole was at a bound. */
  refused: number;
}

/**
 * The gateway's total across its host sessions: the per-session bounds times the session
 * count is far more than a small machine has (64 × 64 MiB), and every host holding the secret
 * may open sessions. Each HostBudget counts into this one as well as its own.
 */
export class GatewayBudget {
  calls = 0;
  unread = 0;
  refused = 0;

  constructor(
    readonly maxCalls: number,
    readonly maxUnreadBytes: number,
  ) {}

  get load(): GatewayLoad {
    return { calls: this.calls, unreadBytes: this.unread, refused: this.refused };
  }

  /** The HOST_BUSY error for a call the whole gateway cannot take now, or undefined. */
  refusal(): McpError | undefined {
    if (this.calls >= this.maxCalls) {
      this.refused++;
      return new McpError(
        HOST_BUSY,
        `the gateway has ${this.calls} calls in flight across its host sessions (its limit is ${this.maxCalls}): retry when some have ended`,
        { retryable: true },
      );
    }
    if (this.unread >= this.maxUnreadBytes) {
      this.refused++;
      return new McpError(
        HOST_BUSY,
        `the gateway holds ${this.unread} bytes of answers its hosts have not yet read (its limit is ${this.maxUnreadBytes}): retry later`,
        { retryable: true },
      );
    }
    return undefined;
  }
}

/**
 * One host session's share of the gateway: a host that sends calls without reading the
 * answers (each a resources/read of a large object, say) must not hold gateway memory without
 * bound, since every other host shares the process. Past either bound a call is refused with
 * HOST_BUSY before it runs.
 *
 * Over stdio an answer counts as delivered once written; over HTTP the transport says when
 * the answer's response has ended (read by the host, or its connection closed).
 */
export class HostBudget {
  private calls = 0;
  private unread = 0;
  private served = 0;
  private refused = 0;
  /** Calls running now. */
  private readonly running = new Set<RequestId>();
  /** Calls whose connection closed while they ran: their answer will never be delivered. */
  private readonly abandoned = new Set<RequestId>();
  /** Bytes of each answer not yet delivered. */
  private readonly held = new Map<RequestId, number>();
  /** Set by a transport that reports delivery (HTTP); otherwise an answer is delivered when sent. */
  tracksDelivery = false;
  /** The session has ended: nothing it holds or will be answered counts any more. */
  private closed = false;

  constructor(
    private readonly maxCalls: number,
    private readonly maxUnreadBytes: number,
    /** The gateway's total, counted into as well (a budget alone has its own only). */
    private readonly total: GatewayBudget = new GatewayBudget(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER),
  ) {}

  get load(): HostLoad {
    return { calls: this.calls, unreadBytes: this.unread, served: this.served, refused: this.refused };
  }

  /** Runs a call within the bounds; its answer's size stays counted until it is delivered. */
  async run<T>(id: RequestId, call: () => Promise<T>): Promise<T> {
    if (this.calls >= this.maxCalls) {
      this.refused++;
      throw new McpError(
        HOST_BUSY,
        `this host session has ${this.calls} calls in flight (the gateway's limit is ${this.maxCalls}): retry when an answer has come`,
        { retryable: true },
      );
    }
    if (this.unread >= this.maxUnreadBytes) {
      this.refused++;
      throw new McpError(
        HOST_BUSY,
        `this host session has ${this.unread} bytes of answers not yet read (the gateway's limit is ${this.maxUnreadBytes}): read them, then retry`,
        { retryable: true },
      );
    }
    const full = this.total.refusal();
    if (full) {
      this.refused++;
      throw full;
    }
    // An id still in use would merge two answers' accounting (and the SDK routes answers by id).
    if (this.running.has(id) || this.held.has(id))
      throw new McpError(ErrorCode.InvalidRequest, `request id ${JSON.stringify(id)} is still in use in this session`);
    this.calls++;
    this.total.calls++;
    this.served++;
    this.running.add(id);
    try {
      const answer = await call();
      if (this.tracksDelivery && !this.abandoned.has(id) && !this.closed) {
        const bytes = jsonSize(answer);
        this.held.set(id, (this.held.get(id) ?? 0) + bytes);
        this.unread += bytes;
        this.total.unread += bytes;
      }
      return answer;
    } finally {
      this.calls--;
      this.total.calls--;
      this.running.delete(id);
      this.abandoned.delete(id);
    }
  }

  /**
   * An answer to `id` handed to the transport (any: a refusal, a ping's, an SDK error) while
   * the response that carries it is open: it counts until that response ends, like a call's.
   * A call's answer is counted by {@link run} already; nothing else may be held unread uncounted.
   */
  hold(id: RequestId, answer: unknown): void {
    if (!this.tracksDelivery || this.closed || this.held.has(id)) return;
    const bytes = jsonSize(answer);
    this.held.set(id, bytes);
    this.unread += bytes;
    this.total.unread += bytes;
  }

  /**
   * The response that carried call `id` has ended (read, or its connection closed). True when
   * the call is still running: its answer can never be delivered, so the caller cancels it.
   */
  delivered(id: RequestId): boolean {
    const bytes = this.held.get(id);
    if (bytes !== undefined) {
      this.held.delete(id);
      this.unread -= bytes;
      this.total.unread -= bytes;
    }
    if (!this.running.has(id)) return false;
    this.abandoned.add(id);
    return true;
  }

  /**
   * The session has ended: its undelivered answers are released from the gateway's total (the
   * transport drops them), and calls still running will add nothing when they end.
   */
  close(): void {
    this.closed = true;
    this.total.unread -= this.unread;
    this.unread = 0;
    this.held.clear();
  }
}

/** About the JSON size of an answer, without writing it out: string lengths plus a little per value. */
function jsonSize(v: unknown): number {
  if (typeof v === "string") return v.length + 2;
  if (v === null || typeof v !== "object") return 8;
  let n = 2;
  if (Array.isArray(v)) for (const x of v) n += jsonSize(x) + 1;
  else for (const [k, x] of Object.entries(v)) n += k.length + 4 + jsonSize(x);
  return n;
}

/** Default refusals per second one host session may draw from the kernel (bursts 5×). */
export const DEFAULT_REFUSALS_PER_SESSION = 2;
/** Default refusals per second all host sessions that were refused lately may draw together (bursts 5×). */
export const DEFAULT_TOTAL_REFUSALS = 10;
/** A host session refused by the kernel within this long shares the gateway's refusal rate. */
const REFUSED_LATELY_MS = 60_000;

/**
 * The refusal rates' default clock, in ms: monotonic (performance.now), so a wall clock stepped
 * (NTP, `date -s`, a VM resumed) moves no bucket and no "refused lately". A clock given instead
 * (a test's) may still step back: the buckets take that as no time passed.
 */
export const monotonicMs = (): number => performance.now();

/** A token bucket of refusals: `rate` a second, bursts of 5 × rate; calls in flight hold a place. */
export class RefusalBucket {
  private tokens: number;
  private at: number;
  pending = 0;

  constructor(
    readonly rate: number,
    private readonly clock: () => number = monotonicMs,
  ) {
    this.tokens = 5 * rate;
    this.at = clock();
  }

  private refill(): void {
    const now = this.clock();
    // A wall clock stepped back (NTP, `date -s`) is no time passed, not a debt: ten minutes back
    // held every host session's calls HOST_BUSY for ten minutes (the kernel's buckets: case 664).
    this.tokens = Math.min(5 * this.rate, this.tokens + (Math.max(0, now - this.at) / 1000) * this.rate);
    this.at = now;
  }

  /**
   * Room for one more call that may be refused: with `reserve`, every call in flight might be
   * (a host refused lately); without, only refusals drawn count (a host never refused keeps all
   * its calls in flight: its bucket is full, and a burst of refusals takes it below 0 at once).
   */
  room(reserve = true): boolean {
    this.refill();
    return this.tokens - (reserve ? this.pending : 0) >= 1;
  }

  /** No refusal drawn lately: the bucket has refilled. */
  full(): boolean {
    this.refill();
    return this.tokens >= 5 * this.rate;
  }

  /** Seconds until there is room again (for the host's retry). */
  wait(): number {
    this.refill();
    return Math.max(1, Math.ceil((this.pending + 1 - this.tokens) / this.rate));
  }

  /** One refusal drawn (a bucket not reserved against may go below 0, down to one burst). */
  take(): void {
    this.refill();
    this.tokens = Math.max(-5 * this.rate, this.tokens - 1);
  }
}

/**
 * Refusals a host draws from the kernel. Every host shares the gateway's one kernel session,
 * and the kernel ends a session past its refusal flood bound (`auditRefusalFloodMax`): one host
 * sending refused calls as fast as it may would end every host's calls. Each host session may
 * be refused `perSession` times a second (bursts 5×); a host refused within the last minute has
 * its calls in flight counted as possible refusals, and also draws on the gateway's total, kept under
 * the kernel's default refusal rate (20 a second). Past either, its calls get HOST_BUSY before
 * they reach the kernel; a host that is not refused is never held back by others' refusals.
 */
export class RefusalRate {
  private readonly own: RefusalBucket;
  private lastRefused = Number.NEGATIVE_INFINITY;
  refused = 0;

  constructor(
    perSession: number,
    private readonly total: RefusalBucket,
    private readonly clock: () => number = monotonicMs,
  ) {
    this.own = new RefusalBucket(perSession, clock);
    // Opened while hosts are being refused: shares the total from the start, so a host cannot
    // step around it by opening new sessions.
    if (!total.full()) this.lastRefused = clock();
  }

  private suspect(): boolean {
    const now = this.clock();
    // A wall clock stepped back put the last refusal ahead of now: no time passed since, not the
    // step's length more of "refused lately" (its calls in flight held as possible refusals), as
    // the buckets take it (case 684).
    if (now < this.lastRefused) this.lastRefused = now;
    return now - this.lastRefused < REFUSED_LATELY_MS;
  }

  /** Runs a call that reaches the kernel; `isRefusal` tells whether its answer was a refusal. */
  async run<T>(call: () => Promise<T>, isRefusal: (answer: T) => boolean): Promise<T> {
    const shared = this.suspect();
    // Calls in flight are reserved against only for a host refused lately: ten long deferred calls
    // of a host the kernel never refused are not ten possible refusals.
    if (!this.own.room(shared)) {
      this.refused++;
      throw new McpError(
        HOST_BUSY,
        `the kernel refused this host session's calls more than ${this.own.rate} times a second: retry in ${this.own.wait()} s`,
        { retryable: true },
      );
    }
    if (shared && !this.total.room()) {
      this.refused++;
      throw new McpError(
        HOST_BUSY,
        `the kernel refused the gateway's calls more than ${this.total.rate} times a second: retry in ${this.total.wait()} s`,
        { retryable: true },
      );
    }
    this.own.pending++;
    if (shared) this.total.pending++;
    let refusal = false;
    try {
      const answer = await call();
      refusal = isRefusal(answer);
      return answer;
    } catch (e) {
      if (refusedByKernel.has(e as object)) refusal = true;
      throw e;
    } finally {
      this.own.pending--;
      if (shared) this.total.pending--;
      if (refusal) this.note();
    }
  }

  /**
   * A kernel refusal the call drew besides its answer (a DEFERRED op followed with op.status or
   * op.cancel, a prefix resources/list skipped): it counts like a refused answer, else a host
   * could draw refusals on the shared kernel session without bound behind answers that are not.
   */
  note(): void {
    this.own.take();
    this.total.take();
    this.lastRefused = this.clock();
  }
}

/** MCP errors that carry a kernel's refusal (a FAILURE answer), not the gateway's own checks. */
const refusedByKernel = new WeakSet<object>();

/** Marks `e` as a kernel's refusal: it draws on the host's refusal rate. */
export function kernelRefusal<E extends object>(e: E): E {
  refusedByKernel.add(e);
  return e;
}
