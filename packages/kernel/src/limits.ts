/**
 * Fixed limits: bounds that are not settings (those are declared in config.ts), named here, in
 * one place, with why they are what they are.
 */

/** Most handles one session may hold (tokens bound at ATTEST and by token.bind). */
export const MAX_HANDLES_PER_SESSION = 256;

/** Most entries one list page returns (storage.list, token.list, compute.list): an answer well inside the decoder's item limit. */
export const MAX_LIST_PAGE = 1000;

/**
 * Bytes one argument of a command or agent may take (its executable's name included), UTF-8:
 * Linux's bound on one exec argument (MAX_ARG_STRLEN, 32 pages with its NUL). Past it the
 * spawn failed E2BIG, which the kernel took for its own failure (INTERNAL, "could not prepare
 * its sandbox"): refused SEMANTIC instead, before anything is made.
 */
export const MAX_ARG_BYTES = 128 * 1024 - 1;

/**
 * Bytes a command's or agent's whole command line may take, the persona's part of it (the
 * executable and its arguments, each counted as exec counts it: its UTF-8 bytes, its NUL and its
 * 8-byte pointer). Well inside exec's own bound (a quarter of the stack limit, 2 MiB under the
 * usual 8 MiB), which bubblewrap's own options and the environment share; and an agent's
 * arguments are kept with its record and answered in `agent.status` and `agent.list`.
 */
export const MAX_ARGV_BYTES = 256 * 1024;

/**
 * Bytes of agents' stored arguments (as the store keeps them: JSON text) one `agent.list` page
 * reads before it ends (PARTIAL, with a cursor): a page of 1,000 agents each with
 * {@link MAX_ARGV_BYTES} of arguments (up to 6× that as JSON, control characters escaped) was
 * seconds of the kernel's one thread and an answer no session could receive.
 */
export const AGENT_LIST_ARGS_BYTES = 1024 * 1024;

/** Bytes an answer's envelope may take beside the bytes it carries (at most half a small maxBody). */
export const ANSWER_ENVELOPE_BYTES = 64 * 1024;

/** The bytes of an object one answer on a session with this maxBody can carry: the frame less its envelope. */
export function answerRoom(maxBody: number): number {
  return maxBody - Math.min(ANSWER_ENVELOPE_BYTES, Math.floor(maxBody / 2));
}

/** Bytes queued on a subscriber's connection above which its events wait in its queue instead. */
export const EVENT_HIGH_WATER_BYTES = 1 << 20;

/** Sizes of the kernel's memory caches (each bounded so a peer cannot grow it). */
export const CACHE_ENTRIES = {
  /** Verified tokens (signature checks skipped on a repeat). */
  verifiedTokens: 4096,
  /** Their bytes (each entry keeps ~15× its token's bytes of heap: ~64 MB at this bound; 4,096 typical tokens fit). */
  verifiedTokenBytes: 4 * 1024 * 1024,
  /** Live-token counts per minter (maxLiveTokens). */
  liveTokenCounts: 10_000,
  /** Parsed persona public keys. */
  personaKeys: 10_000,
} as const;

/**
 * The share of the cache of verified tokens (its entries and its bytes, {@link CACHE_ENTRIES}) one
 * persona tree's tokens may hold: past it a tree's new token replaces its own oldest. The cache is
 * kernel-wide and forgets its oldest first: without a share one tree's fresh offline attenuations
 * (within its budget of new token bytes) pushed every other tree's tokens out, and each was then
 * verified again and charged to *their* budget. A quarter: 1,024 tokens and 1 MiB, and four trees
 * are needed to fill it.
 */
export const VERIFIED_TOKENS_TREE_SHARE = 4;

/**
 * The share of the dedupe cache (`dedupeMaxEntries`) one persona tree's running requests may
 * hold: a running request's record is never evicted (its duplicate would run the effect again),
 * so without a share one tree holding requests open could fill the cache and leave every other
 * persona's requests refused. A quarter: 25,000 running at the default, well above what a
 * client keeps in flight, and four trees are needed to fill it.
 */
export const DEDUPE_RUNNING_TREE_SHARE = 4;

/**
 * The part of the dedupe cache's running requests kept for the admin persona alone (a
 * sixteenth: 6,250 at the default, at least 1): four trees at their share (the admin's own tree,
 * its agents', among them) filled it, and the admin's every request was refused.
 */
export const DEDUPE_ADMIN_RESERVE_SHARE = 16;

/** How often housekeeping prunes dedupe answers, finished ops, expired tokens and old audit records. */
export const PRUNE_INTERVAL_MS = 60_000;

/**
 * How soon the refusals counted past the refusal rate go on the record (one `audit.suppressed`
 * record per session), from the first one counted: they are answered at once, so a kernel
 * killed before their record committed leaves them off the record for good. At the tick
 * (2.5 s by default) that was up to thousands of answered refusals (case 714); now at most this
 * long's, and at most 4 aggregate records a second per flooding session.
 */
export const SUPPRESSED_FLUSH_MS = 250;

/** The housekeeping timer's shortest period (it runs at half the shorter of heartbeat and handshake timeout). */
export const MIN_TICK_MS = 50;

/**
 * Sessions the housekeeping tick visits per turn of the event loop (a PING write each, a few µs):
 * a request waits behind one slice of the heartbeat sweep, not all of it.
 */
export const TICK_SLICE_SESSIONS = 64;

/**
 * Subscriptions the housekeeping's lapse sweep asks per turn of the event loop (a revocation and
 * expiry check each, ~0.2 µs): a request waits behind one slice, not every subscription.
 */
export const LAPSE_SLICE = 1024;

/** How long gRPC may take to finish its streams beyond the drain timeout, at stop. */
export const GRPC_CLOSE_GRACE_MS = 1000;

/**
 * Most `/`-segments a subscription pattern (`event.subscribe`, `storage.watch`) may have after
 * `scheme://`. Each segment is a node of the subscription index and a step an emit may take, so
 * this bounds both what one subscription holds and what an emit walks, whatever the pattern's
 * bytes. The deepest names the protocol itself makes are kernel topics (12 segments with an
 * 8-level persona id); 32 leaves room for deep object paths.
 */
export const MAX_PATTERN_SEGMENTS = 32;

/**
 * Most single-segment `*` wildcards a subscription pattern may have. An emit's walk visits, at
 * each depth d, at most the index nodes whose path is its topic with up to this many segments
 * replaced by `*`: Σ C(d, k) for k ≤ 4, so ≤ ~280,000 steps over 32 segments however many
 * subscriptions the kernel holds (without it, 65,536 subscriptions × 33). Every agent lifecycle
 * topic of single-level personas (`topic://kernel/agents/<P>/<executable>/<instance>`) takes 3;
 * wider sets of topics are matched with `**`.
 */
export const MAX_PATTERN_STARS = 4;
