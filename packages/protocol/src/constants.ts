/** Two magic bytes that open every frame: ASCII "KP". */
export const MAGIC = 0x4b50;
/** The frame-layout version carried in every frame header. */
export const FRAME_VERSION = 1;
/** Fixed size of a frame header in bytes. */
export const HEADER_SIZE = 16;
/** Protocol (body) versions this implementation speaks, highest last. */
export const SUPPORTED_VERSIONS: readonly number[] = [1];
/** The protocol version this implementation prefers. */
export const PROTOCOL_VERSION = 1;
/**
 * Largest ATTEST `measurements`, as canonical CBOR (PROTOCOL §6.5): a few hashes and names. They
 * go whole into every session's audit record, so a larger map would let any persona, with no
 * token, grow the log by a megabyte a connection.
 */
export const MAX_MEASUREMENTS_BYTES = 4096;

/** Message types, the fourth byte of a frame header. */
export const MessageType = {
  HELLO: 1,
  CHALLENGE: 2,
  ATTEST: 3,
  WELCOME: 4,
  REQUEST: 5,
  RESPONSE: 6,
  EVENT: 7,
  PING: 8,
  PONG: 9,
  GOODBYE: 10,
  ERROR: 11,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];
export type MessageTypeName = keyof typeof MessageType;

const NAMES: Record<number, MessageTypeName> = Object.fromEntries(
  Object.entries(MessageType).map(([k, v]) => [v, k as MessageTypeName]),
);

/** The name of a message type, or undefined for an unknown type number. */
export function messageTypeName(type: number): MessageTypeName | undefined {
  return NAMES[type];
}

/** Frame flag bits, the fifth byte of a frame header. */
export const FrameFlag = {
  /** The body is a shared-memory descriptor, not the payload itself (transports issue). */
  SHM: 0x01,
} as const;
/** Every flag bit this implementation understands; any other bit set is a PROTOCOL error. */
export const KNOWN_FLAGS = FrameFlag.SHM;

/**
 * The smallest maxBody a peer may ask for in HELLO (PROTOCOL §8.3): every control message and
 * every FAILURE the kernel sends fits in it.
 */
export const MIN_MAX_BODY = 4096;

/**
 * The shortest heartbeat interval (PROTOCOL §8.5): a kernel announces `heartbeatMs` 0 (no
 * heartbeat) or at least this; a peer takes 1..99 as this, so it neither PINGs on every tick
 * nor calls a live peer dead after a few milliseconds of quiet.
 */
export const MIN_HEARTBEAT_MS = 100;

/** The heartbeat interval a peer keeps for a CHALLENGE's `heartbeatMs` (§8.5): 0 for none, else at least {@link MIN_HEARTBEAT_MS}. */
export const heartbeatInterval = (announced: number): number => (announced === 0 ? 0 : Math.max(announced, MIN_HEARTBEAT_MS));

/**
 * Largest frame bodies before WELCOME (PROTOCOL §8.8), in both directions: a HELLO (or the
 * kernel's CHALLENGE, or an ERROR refusing the HELLO) is a few hundred bytes; an ATTEST (or a
 * WELCOME) at most 64 tokens of 8 KiB (64 handles and refusals) and its measurements. Before it
 * has a session, neither side makes the other buffer a session's maxBody.
 */
export const HANDSHAKE_MAX_BODY = { hello: 16 * 1024, attest: 1024 * 1024 } as const;

/**
 * Most data items in an ATTEST body (PROTOCOL §8.8): its signature, its tokens (64 byte strings)
 * and its measurements (at most {@link MAX_MEASUREMENTS_BYTES} as canonical CBOR, so fewer items
 * than that) with their keys. Decoding an item costs the receiver up to microseconds (a map key
 * becomes a property), so a 1 MiB ATTEST of 100,000 items held the kernel's thread ~30–140 ms
 * before any signature was looked at, for any unauthenticated peer.
 */
export const HANDSHAKE_MAX_ITEMS = MAX_MEASUREMENTS_BYTES + 128;

/**
 * Most data items in the body of each message a kernel receives from a peer (PROTOCOL §8.8):
 * what its type can hold, with room for fields of later versions (unknown fields are ignored, but
 * still decoded). A REQUEST holds at most ~90 (its intent is one byte string, decoded apart with
 * its own bounds), a HELLO ~65, PING, PONG, GOODBYE and ERROR a dozen; any other type is out of
 * order from a peer. Without them every frame was decoded within `maxItems` (100,000): a PING
 * carrying an unknown field of 50,000 map keys (300 KB) held the kernel's thread ~140 ms, as
 * often as an attested peer sent one.
 */
export const PEER_MESSAGE_MAX_ITEMS: Readonly<Record<number, number>> = {
  [MessageType.HELLO]: 128,
  [MessageType.ATTEST]: HANDSHAKE_MAX_ITEMS,
  [MessageType.REQUEST]: 256,
};
/** Most data items in the body of a message type {@link PEER_MESSAGE_MAX_ITEMS} does not name. */
export const PEER_OTHER_MESSAGE_MAX_ITEMS = 64;

/** Defaults for the limits negotiated at handshake; each side may lower them. */
export const DEFAULT_LIMITS = {
  /** Largest frame body accepted, in bytes. */
  maxBodyBytes: 16 * 1024 * 1024,
  /** Deepest nesting of arrays and maps in a body. */
  maxDepth: 32,
  /** Most data items (every array element, map key and value counts) in one body. */
  maxItems: 100_000,
  /** Longest op name in bytes. */
  maxOpBytes: 128,
  /** Longest target URI in bytes. */
  maxTargetBytes: 2048,
} as const;

/**
 * Largest gRPC message either side sends or accepts (PROTOCOL §3.6), whatever maxBody is: a
 * frame larger than this travels as several messages. gRPC libraries buffer a message whole
 * before handing it over, so the receive limit is what any stream — one that has not even sent
 * HELLO — can make its peer hold: it was `16 + maxBody` (16 MiB by default) for every stream.
 */
export const GRPC_MAX_MESSAGE_BYTES = 1024 * 1024;

export interface DecodeLimits {
  maxDepth: number;
  maxItems: number;
}
