import { isIPv4, isIPv6 } from "node:net";

/** The one peer key of every loopback address (127.0.0.0/8 and ::1). */
export const LOOPBACK_PEER = "loopback";

/**
 * The key the pre-authentication bounds count a peer address under (half-open connections,
 * failed handshakes' records, log lines): an IPv6 address by its /64 — one host is commonly
 * given a whole /64, so counting each /128 apart let one peer rotate through addresses, each
 * with a fresh allowance, until the per-peer table was full and only the shared transport
 * bound was left — and an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
 * listener reports for an IPv4 peer) as its IPv4 address, so a peer is one key whichever
 * listener it reached. Every loopback address (all of 127.0.0.0/8, ::1, mapped or not) is one
 * key, {@link LOOPBACK_PEER}: any local user can bind any 127.x.y.z, so counting each apart gave
 * one local peer a fresh allowance per address (17 addresses held ~1024 gRPC connections).
 * Anything else (an IPv4 address, "" when the transport knows none) is its own key.
 */
export function peerKey(address: string): string {
  // A link-local address's zone ("%eth0") names the kernel's interface, not the peer.
  const bare = address.includes("%") ? address.slice(0, address.indexOf("%")) : address;
  if (!isIPv6(bare)) return isIPv4(bare) && bare.startsWith("127.") ? LOOPBACK_PEER : address;
  const h = hextets(bare);
  if (h.slice(0, 5).every((x) => x === 0) && h[5] === 0xffff) {
    const [a, b] = [h[6] as number, h[7] as number];
    if (a >> 8 === 127) return LOOPBACK_PEER;
    return `${a >> 8}.${a & 0xff}.${b >> 8}.${b & 0xff}`;
  }
  if (h.slice(0, 7).every((x) => x === 0) && h[7] === 1) return LOOPBACK_PEER;
  // RFC 5952's short form: the prefix's trailing zero groups join the "::" of the zero host half.
  const prefix = h.slice(0, 4);
  while (prefix.length > 0 && prefix[prefix.length - 1] === 0) prefix.pop();
  return `${prefix.map((x) => x.toString(16)).join(":")}::/64`;
}

/**
 * A coarser key for a peer whose own key found no room in a table of keys peers pick (they
 * rotated through many addresses): an IPv4 address by its /24, an IPv6 one by its /48. Peers
 * elsewhere then do not share the overflow with whoever filled the table.
 */
export function overflowKey(address: string): string {
  const key = peerKey(address);
  if (key === LOOPBACK_PEER) return key;
  if (isIPv4(key)) return `${key.slice(0, key.lastIndexOf("."))}.0/24`;
  const bare = address.includes("%") ? address.slice(0, address.indexOf("%")) : address;
  if (!isIPv6(bare)) return "(other peers)";
  return `${hextets(bare)
    .slice(0, 3)
    .map((x) => x.toString(16))
    .join(":")}::/48`;
}

/** The eight 16-bit groups of a valid IPv6 address (`::` expanded, a dotted IPv4 tail as two groups). */
function hextets(address: string): number[] {
  let text = address.toLowerCase();
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (isIPv4(tail)) {
    const [a, b, c, d] = tail.split(".").map(Number) as [number, number, number, number];
    text = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, rest] = text.split("::") as [string, string | undefined];
  const groups = (s: string) => (s === "" ? [] : s.split(":").map((g) => Number.parseInt(g, 16)));
  if (rest === undefined) return groups(head);
  const left = groups(head);
  const right = groups(rest);
  return [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
}
