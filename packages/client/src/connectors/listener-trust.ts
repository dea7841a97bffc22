import { readFileSync } from "node:fs";
import { endianness } from "node:os";
import { UntrustedSocketError } from "../errors.js";

/** Linux's tables of TCP sockets in the process's network namespace, each with its owner's uid. */
const TCP_TABLES = ["/proc/net/tcp", "/proc/net/tcp6"];
/** The tables write each 32-bit word of an address in host order. */
const LITTLE = endianness() === "LE";

/**
 * Whether a local address as /proc/net/tcp{,6} writes it (hex, each 32-bit word in host order)
 * is one a loopback client may reach: a loopback address (127/8, ::1, ::ffff:127/104) or a
 * wildcard (0.0.0.0, ::), which serves loopback too.
 */
function loopbackOrAny(hex: string): boolean {
  const word = (i: number) => hex.slice(i * 8, i * 8 + 8).toUpperCase();
  // A word in host order: on little-endian hosts 127.0.0.1 is 0100007F, its first octet last.
  const v4 = (w: string) => w === "00000000" || (LITTLE ? w.endsWith("7F") : w.startsWith("7F"));
  if (hex.length === 8) return v4(word(0));
  if (hex.length !== 32) return false;
  const [a, b, c, d] = [word(0), word(1), word(2), word(3)];
  if (a !== "00000000" || b !== "00000000") return false;
  if (c === "00000000") return d === "00000000" || d === (LITTLE ? "01000000" : "00000001");
  // An IPv4-mapped address (::ffff:a.b.c.d).
  return c === (LITTLE ? "FFFF0000" : "0000FFFF") && v4(d);
}

/**
 * The uids owning TCP sockets whose local end is `port` on a loopback or wildcard address, from
 * the text of /proc/net/tcp and /proc/net/tcp6: every listener a loopback client of that port can
 * reach, and the connections they accepted (an accepted socket keeps its listener's owner).
 */
export function loopbackPortOwners(port: number, tables: string[]): number[] {
  const owners = new Set<number>();
  for (const table of tables) {
    for (const line of table.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      const local = f[1];
      const uid = Number(f[7]);
      if (local === undefined || !Number.isInteger(uid)) continue;
      const i = local.lastIndexOf(":");
      if (Number.parseInt(local.slice(i + 1), 16) !== port || !loopbackOrAny(local.slice(0, i))) continue;
      owners.add(uid);
    }
  }
  return [...owners];
}

/**
 * Why the plaintext gRPC listener at the loopback `address` ("127.0.0.1:p", "[::1]:p",
 * "localhost:p") may not be trusted by the user `me` (undefined: it may). A TCP port on loopback
 * is anyone's to take: any local user can listen on it while the kernel is not (a restart, a
 * crash, before it starts), or on the other loopback address `localhost` also names, and receive
 * the HELLO, the ATTEST signature and every token — or relay them to the real kernel and sit in
 * the middle of the session. So every socket on that port of a loopback or wildcard address must
 * be `me`'s, root's or `kernelUid`'s. Without Linux's tables (another system) nothing is checked.
 */
export function untrustedListener(
  address: string,
  me: number,
  kernelUid: number | undefined,
  read: (path: string) => string = (p) => readFileSync(p, "utf8"),
): UntrustedSocketError | undefined {
  const port = Number(address.slice(address.lastIndexOf(":") + 1));
  if (!Number.isInteger(port) || port <= 0) return undefined;
  const tables: string[] = [];
  for (const path of TCP_TABLES) {
    try {
      tables.push(read(path));
    } catch {
      // No such table (no IPv6, or not Linux).
    }
  }
  const foreign = loopbackPortOwners(port, tables).filter((uid) => uid !== me && uid !== 0 && uid !== kernelUid);
  if (foreign.length === 0) return undefined;
  return new UntrustedSocketError(
    `the gRPC listener at ${address} is not to be trusted: port ${port} on loopback is held by uid ${foreign.join(", ")}, not by this user (uid ${me}), root${kernelUid !== undefined ? ` or the kernel's uid ${kernelUid}` : ""}; any local user can listen on a loopback port, so another user put it there; nothing was sent to it`,
  );
}
