import { createRequire } from "node:module";
import type net from "node:net";
import type { PeerProcess } from "../session/connection.js";

/**
 * Reads a connected Unix socket's peer process (SO_PEERCRED), or says in a few words why it
 * cannot: the addon not loaded (`KPIP_PEERCRED=off`, not built, not Linux), or the OS refused.
 */
export type PeerReader = (sock: net.Socket) => PeerProcess | string;

interface Addon {
  peer(fd: number): { pid: number; uid: number; gid: number; start: number };
  /** The uid owning the TCP socket at the other end of (peer, local), or why it is unknown. */
  tcpOwner?(peerAddress: string, peerPort: number, localAddress: string, localPort: number): number | string;
}

let loaded: { addon?: Addon; reason?: string } | undefined;

/** The addon, loaded once; `reason` says why not, for the kernel's one log line at start. */
function load(): { addon?: Addon; reason?: string } {
  if (loaded) return loaded;
  try {
    // packages/kernel/dist/src/transport → packages/kernel/build/Release (node-gyp's output).
    const a = createRequire(import.meta.url)("../../../build/Release/peercred.node") as Partial<Addon>;
    loaded = typeof a.peer === "function" ? { addon: a as Addon } : { reason: `no SO_PEERCRED on ${process.platform}` };
  } catch (e) {
    loaded = { reason: `the peer-credentials addon did not load (${(e as Error).message.split("\n")[0]})` };
  }
  return loaded;
}

/**
 * The reader for a listener starting now, or why there is none. Node cannot read SO_PEERCRED:
 * the kernel's own addon does (native/peercred.c, built at `npm install`; docs/architecture.md ›
 * Peer processes). KPIP_PEERCRED=off is read at each start, so a kernel (or a test) can run as
 * one without the addon would.
 */
export function peerReader(): { read: PeerReader; reason?: string } {
  const { addon, reason } = process.env.KPIP_PEERCRED === "off" ? { reason: "disabled by KPIP_PEERCRED=off" } : load();
  if (!addon) return { read: () => "addon not loaded", reason };
  return {
    read: (sock) => {
      // libuv's pipe handle exposes its descriptor on Unix; -1 (or none) when it has none.
      const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
      if (typeof fd !== "number" || fd < 0) return "no descriptor";
      try {
        const p = addon.peer(fd);
        return p.start >= 0 ? p : { pid: p.pid, uid: p.uid, gid: p.gid };
      } catch (e) {
        return (e as Error).message;
      }
    },
  };
}

/**
 * Reads which local user owns a loopback TCP peer's socket (the addon's sock_diag look-up of the
 * exact 4-tuple), or says in a few words why it cannot. Never the peer's word: Linux's own record
 * of the socket. A socket its process already closed names no user (its uid would read as root's).
 */
export type LoopbackOwnerReader = (sock: net.Socket) => number | string;

/** The reader for a gRPC listener starting now, or why there is none (KPIP_PEERCRED=off as for {@link peerReader}). */
export function loopbackOwnerReader(): { read: LoopbackOwnerReader; reason?: string } {
  const { addon, reason } = process.env.KPIP_PEERCRED === "off" ? { reason: "disabled by KPIP_PEERCRED=off" } : load();
  const owner = addon?.tcpOwner;
  if (!addon || !owner) return { read: () => "addon not loaded", reason: reason ?? "no sock_diag in the addon" };
  return {
    read: (sock) => {
      const { remoteAddress, remotePort, localAddress, localPort } = sock;
      if (!remoteAddress || !remotePort || !localAddress || !localPort) return "no address";
      try {
        return owner.call(addon, remoteAddress, remotePort, localAddress, localPort);
      } catch (e) {
        return (e as Error).message;
      }
    },
  };
}
