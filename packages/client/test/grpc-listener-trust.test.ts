import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { endianness, tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { loopbackPortOwners, untrustedListener } from "../src/connectors/listener-trust.js";
import { GrpcConnector, InsecureTransportError, UntrustedSocketError } from "../src/index.js";
import { until } from "./harness.js";

const SQUATTER = fileURLToPath(new URL("../../test/fixtures/grpc-squatter.mjs", import.meta.url));
const DIAL = fileURLToPath(new URL("../../test/fixtures/grpc-dial.mjs", import.meta.url));

// Two users besides root: the client's and another local user's. Root makes both processes.
const asRoot = process.getuid?.() === 0;
const needsRoot = asRoot ? false : "NOT RUN: needs root, to run processes of two other users";
const CLIENT_UID = 65533;
const OTHER_UID = 65534;

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill();
});

/** A listener on a loopback port (or at `path`), run as `uid`: its port, and whether a gRPC call reached it. */
async function squatter(uid: number, path?: string): Promise<{ port: number; streams: () => number }> {
  const args = [SQUATTER, ...(path !== undefined ? [path] : [])];
  const child = spawn(process.execPath, args, { uid, gid: uid, stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`the listener exited (${code}): ${out}`)));
    const look = () => {
      const m = /PORT (\d+)|PATH/.exec(out);
      if (m) resolve(Number(m[1] ?? 0));
      else child.stdout?.once("data", look);
    };
    look();
  });
  return { port, streams: () => out.split("\n").filter((l) => l === "STREAM").length };
}

/** The client dialling `address` once, as the unprivileged client user: its error's name and message. */
async function dial(address: string, kernelUid?: number): Promise<{ name: string; message?: string }> {
  const args = [DIAL, address, ...(kernelUid !== undefined ? [String(kernelUid)] : [])];
  const child = spawn(process.execPath, args, { uid: CLIENT_UID, gid: CLIENT_UID, stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  await new Promise((r) => child.once("exit", r));
  return JSON.parse(out.trim().split("\n").at(-1) as string) as { name: string; message?: string };
}

/** A line of /proc/net/tcp{,6}: a local address (hex, words in host order), a port, a state and its owner. */
function row(local: string, port: number, uid: number, state = "0A"): string {
  const p = port.toString(16).toUpperCase().padStart(4, "0");
  return `   0: ${local}:${p} 00000000:0000 ${state} 00000000:00000000 00:00000000 00000000 ${uid}        0 4242 1 0 100 0 0 10 0`;
}
const HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const le = endianness() === "LE";
const V4 = (octets: number[]) =>
  Buffer.from(le ? [...octets].reverse() : octets)
    .toString("hex")
    .toUpperCase();

describe("a plaintext loopback gRPC port another local user holds", () => {
  it("the owners of a loopback port are read from Linux's TCP tables: loopback and wildcard addresses, IPv4 and IPv6", () => {
    const tcp = [
      HEADER,
      row(V4([127, 0, 0, 1]), 50051, 1000),
      row(V4([0, 0, 0, 0]), 50051, 1001),
      row(V4([127, 0, 0, 1]), 50052, 1002),
      // Not loopback: another address's port is not what a loopback client reaches.
      row(V4([10, 0, 0, 127]), 50051, 1003),
      // An accepted connection keeps its listener's owner.
      row(V4([127, 9, 9, 9]), 50051, 1004, "01"),
    ].join("\n");
    const ipv6 = (words: number[][]) => words.map((w) => V4(w)).join("");
    const tcp6 = [
      HEADER,
      row(
        ipv6([
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [0, 0, 0, 1],
        ]),
        50051,
        1005,
      ),
      row(
        ipv6([
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [0, 0, 0xff, 0xff],
          [127, 0, 0, 1],
        ]),
        50051,
        1006,
      ),
      row(
        ipv6([
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [0, 0, 0, 0],
        ]),
        50051,
        1007,
      ),
      row(
        ipv6([
          [0x20, 0x01, 0x0d, 0xb8],
          [0, 0, 0, 0],
          [0, 0, 0, 0],
          [0, 0, 0, 1],
        ]),
        50051,
        1008,
      ),
    ].join("\n");
    assert.deepEqual(loopbackPortOwners(50051, [tcp, tcp6]).sort(), [1000, 1001, 1004, 1005, 1006, 1007]);
    const read = (p: string) => (p.endsWith("6") ? tcp6 : tcp);
    assert.ok(untrustedListener("localhost:50052", 1002, undefined, read) === undefined, "the user's own port");
    const e = untrustedListener("[::1]:50052", 1000, undefined, read);
    assert.ok(e instanceof UntrustedSocketError, String(e));
    assert.match(e.message, /held by uid 1002/);
    assert.equal(untrustedListener("127.0.0.1:50052", 1000, 1002, read), undefined, "the kernel's uid named");
    assert.equal(
      untrustedListener("127.0.0.1:50053", 1000, undefined, () => {
        throw new Error("ENOENT");
      }),
      undefined,
      "no tables (not Linux): nothing to check",
    );
  });

  it("the client sends no HELLO, signature or token to a loopback gRPC port of another user: UntrustedSocketError", {
    skip: needsRoot,
  }, async () => {
    const other = await squatter(OTHER_UID);
    const r = await dial(`127.0.0.1:${other.port}`);
    assert.equal(r.name, "UntrustedSocketError", r.message);
    assert.match(r.message as string, new RegExp(`held by uid ${OTHER_UID}`));
    assert.equal(other.streams(), 0, "no gRPC call (which would carry HELLO and ATTEST) reached the listener");
    // The same port, with the kernel's uid named (a kernel run by a service user): dialled.
    const named = await dial(`127.0.0.1:${other.port}`, OTHER_UID);
    assert.notEqual(named.name, "UntrustedSocketError", named.message);
    await until(() => other.streams() > 0, 30_000, "the call went to the named uid's listener");
    // A listener of the client's own user: dialled.
    const own = await squatter(CLIENT_UID);
    const mine = await dial(`127.0.0.1:${own.port}`);
    assert.notEqual(mine.name, "UntrustedSocketError", mine.message);
    await until(() => own.streams() > 0, 30_000, "the call went to the user's own listener");
  });

  it("a unix: gRPC address is checked as the Unix socket is; an abstract name is never dialled in plaintext", async (t) => {
    // An abstract socket has no owner: any local user may take the name.
    assert.throws(() => new GrpcConnector({ address: "unix-abstract:kpip", insecure: true }), InsecureTransportError);
    if (needsRoot) return t.skip(needsRoot);
    const base = mkdtempSync(join(tmpdir(), "kpip-grpc-unix-"));
    try {
      chmodSync(base, 0o755);
      // The other user's socket in a directory of theirs, reachable by the client's user.
      const dir = join(base, "other");
      ownedDir(dir, OTHER_UID);
      const other = await squatter(OTHER_UID, join(dir, "kernel.sock"));
      const r = await dial(`unix:${join(dir, "kernel.sock")}`);
      assert.equal(r.name, "UntrustedSocketError", r.message);
      assert.equal(other.streams(), 0, "no gRPC call reached the other user's socket");
      // The client's own socket: dialled.
      const mineDir = join(base, "mine");
      ownedDir(mineDir, CLIENT_UID);
      const own = await squatter(CLIENT_UID, join(mineDir, "kernel.sock"));
      const mine = await dial(`unix://${join(mineDir, "kernel.sock")}`);
      assert.notEqual(mine.name, "UntrustedSocketError", mine.message);
      await until(() => own.streams() > 0, 30_000, "the call went to the user's own socket");
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

/** A directory of `uid`, 0755. */
function ownedDir(path: string, uid: number): void {
  mkdirSync(path);
  chmodSync(path, 0o755);
  chownSync(path, uid, uid);
}
