import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { release, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { serializeIdentity } from "@kpip/protocol";
import { runProcess } from "@kpip/protocol/testing";
import { loopbackOwnerReader, peerReader } from "../src/transport/peer-process.js";
import { python } from "./conformance/python.js";
import { REPO_ROOT, until, withKernel } from "./harness.js";
import { allAudit } from "./wire.js";

const PERSONA = fileURLToPath(new URL("../../test/fixtures/uds-persona.mjs", import.meta.url));
const linux = process.platform === "linux";
/** SO_PEERPIDFD came with Linux 6.5: before it the kernel leaves `start` out (it cannot pin the pid). */
const [major = 0, minor = 0] = release().split(".").map(Number);
const pinsStart = linux && (major > 6 || (major === 6 && minor >= 5));

/** What the record should say of a process that reported itself: its start only where the kernel can pin it. */
function expected(p: { pid: number; uid: number; gid: number; start: number }): Record<string, number> {
  return pinsStart ? p : { pid: p.pid, uid: p.uid, gid: p.gid };
}

/** The process fields of the session.open records of `persona`, in order. */
function openedBy(rows: ReturnType<typeof allAudit>, persona: string): Record<string, unknown>[] {
  return rows
    .filter((r) => r.op === "session.open" && r.persona === persona)
    .map((r) => JSON.parse(r.detail ?? "{}") as Record<string, unknown>);
}

/** This process's start, clock ticks after boot (/proc/self/stat field 22). */
function ownStart(): number {
  const stat = readFileSync("/proc/self/stat", "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[22 - 3]);
}

describe("the Unix socket's peer process is on the session.open record (SO_PEERCRED)", () => {
  it("one token used from two processes: each session.open names its own process's real pid, uid, gid and start", {
    skip: !linux && "SO_PEERCRED is Linux's",
  }, async () => {
    await withKernel({}, async (t) => {
      const p = await t.persona("leaky", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const env = {
        ...process.env,
        KPIP_TEST_SOCKET: t.k.socketPath,
        KPIP_TEST_IDENTITY: serializeIdentity(p.identity),
        KPIP_TEST_TOKEN: Buffer.from(p.token).toString("base64url"),
      };
      const runs = await Promise.all(
        [1, 2].map(() => runProcess(process.execPath, [PERSONA], { cwd: REPO_ROOT, env, killAfterMs: 60_000 })),
      );
      const children = runs.map((r) => {
        assert.equal(r.code, 0, r.err);
        return JSON.parse(r.out) as { pid: number; uid: number; gid: number; start: number };
      });
      assert.notEqual(children[0]?.pid, children[1]?.pid);
      const opened = await until(
        () => {
          const o = openedBy(allAudit(t.k), "leaky");
          return o.length === 2 ? o : undefined;
        },
        10_000,
        "both sessions' open records",
      );
      assert.ok(
        opened.every((d) => d.process !== null),
        `peer processes unknown (${opened.map((d) => d.processUnknown).join(", ")}): did \`npm install\` build packages/kernel/build/Release/peercred.node?`,
      );
      // The same token and persona; only the process tells the two sessions' holders apart.
      const byPid = new Map(opened.map((d) => [(d.process as { pid: number }).pid, d.process]));
      for (const c of children) assert.deepEqual(byPid.get(c.pid), expected(c), "the record names the process that connected");
    });
  });

  it("the kernel's own connection names the kernel's process (pid, uid, gid, start)", {
    skip: !linux && "SO_PEERCRED is Linux's",
  }, async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      const [d] = openedBy(allAudit(t.k), c.persona);
      const own = { pid: process.pid, uid: process.getuid?.() ?? -1, gid: process.getgid?.() ?? -1, start: ownStart() };
      assert.deepEqual(d?.process, expected(own));
    });
  });

  it("a peer process gone before the read: its pid, uid and gid, and no start (the pid may name another process by then)", {
    skip: !linux && "SO_PEERCRED is Linux's",
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-peer-"));
    const path = join(dir, "s.sock");
    let accepted: (s: net.Socket) => void = () => {};
    const got = new Promise<net.Socket>((r) => {
      accepted = r;
    });
    // Paused: the child's end is not read, so the socket (and its descriptor) stays open.
    const server = net.createServer({ pauseOnConnect: true }, (s) => accepted(s));
    await new Promise<void>((r) => server.listen(path, r));
    try {
      // The child connects and exits; only once it is gone (and reaped) is its connection read.
      const child = spawn(process.execPath, ["-e", `require("net").connect(${JSON.stringify(path)}, () => process.exit(0))`]);
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      const sock = await got;
      await exited;
      const p = peerReader().read(sock);
      assert.deepEqual(p, { pid: child.pid, uid: process.getuid?.(), gid: process.getgid?.() });
      sock.destroy();
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a peer with thousands of threads costs the read no more than a peer with one: its start is its main thread's, not a sum over its threads", {
    skip: (!linux && "SO_PEERCRED is Linux's") || (!python.path && "no python3 to start a many-threaded peer"),
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-peer-"));
    const path = join(dir, "s.sock");
    const accepted: net.Socket[] = [];
    let wake = () => {};
    const server = net.createServer({ pauseOnConnect: true }, (s) => {
      accepted.push(s);
      wake();
    });
    await new Promise<void>((r) => server.listen(path, r));
    // A peer with `threads` idle threads (small stacks) connects, prints its start, and waits for stdin to close.
    const peer = async (threads: number) => {
      const script = [
        "import socket, sys, threading",
        "threading.stack_size(65536)",
        "ev = threading.Event()",
        `for _ in range(${threads}): threading.Thread(target=ev.wait, daemon=True).start()`,
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
        "st = open('/proc/self/stat').read(); print(st[st.rindex(')') + 2:].split(' ')[19], flush=True)",
        "sys.stdin.read()",
      ].join("\n");
      const child = spawn(python.path as string, ["-c", script, path], { stdio: ["pipe", "pipe", "inherit"] });
      let out = "";
      child.stdout.on("data", (b: Buffer) => {
        out += b;
        wake();
      });
      const n = accepted.length;
      await new Promise<void>((r) => {
        wake = () => {
          if (accepted.length > n && out.includes("\n")) r();
        };
      });
      return { child, sock: accepted[n] as net.Socket, start: Number(out.trim()) };
    };
    const one = await peer(0);
    const many = await peer(4000);
    try {
      const read = peerReader().read;
      for (const p of [one, many]) {
        const got = read(p.sock);
        assert.ok(typeof got === "object", `peer unknown: ${String(got)}`);
        assert.deepEqual(got, expected({ pid: p.child.pid as number, uid: got.uid, gid: got.gid, start: p.start }));
      }
      // CPU time of the reads, the cheapest of a few batches: the process's /proc/<pid>/stat sums
      // every thread's counters as it is read (4,000 threads: ~30× one thread's cost here), so a
      // peer's threads made each accept cost the kernel's thread that much. Its main thread's
      // stat holds the same start at a thread's cost. A ratio of CPU time, not a wall-clock bound.
      const cost = (sock: net.Socket) => {
        let best = Number.POSITIVE_INFINITY;
        for (let b = 0; b < 5; b++) {
          const t = process.cpuUsage();
          for (let i = 0; i < 200; i++) read(sock);
          const d = process.cpuUsage(t);
          best = Math.min(best, d.user + d.system);
        }
        return best;
      };
      const base = cost(one.sock);
      const threaded = cost(many.sock);
      assert.ok(
        threaded < 5 * base + 2000,
        `200 reads: ${threaded} µs of CPU for a 4,000-thread peer, ${base} µs for one thread`,
      );
    } finally {
      for (const p of [one, many]) {
        p.child.stdin?.end();
        p.sock.destroy();
      }
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("without the addon the kernel still serves, and the record says the peer process is unknown (never a guess)", async () => {
    const saved = process.env.KPIP_PEERCRED;
    process.env.KPIP_PEERCRED = "off";
    try {
      await withKernel({}, async (t) => {
        const c = await t.admin();
        assert.equal((await c.system.health()).status, "ok");
        const opened = openedBy(allAudit(t.k), c.persona);
        assert.equal(opened.length, 1);
        assert.equal(opened[0]?.process, null);
        assert.equal(opened[0]?.processUnknown, "addon not loaded");
      });
    } finally {
      if (saved === undefined) delete process.env.KPIP_PEERCRED;
      else process.env.KPIP_PEERCRED = saved;
    }
  });
});

describe("system.status names the process holding each Unix-socket session (operator view)", () => {
  it("the operator sees each Unix-socket session's pid; a persona's own view has none", {
    skip: !linux && "SO_PEERCRED is Linux's",
  }, async () => {
    await withKernel({}, async (t) => {
      const admin = await t.admin();
      const p = await t.persona("viewer", [{ ops: ["system.status"], targets: ["kernel://"] }]);
      const viewer = await t.connect(p.identity, [p.token]);
      const op = (await admin.call("system.status", "kernel://")).payload as { sessions: { id: string; pid?: number }[] };
      const mine = op.sessions.find((s) => s.id === admin.sessionId);
      assert.equal(mine?.pid, process.pid);
      const own = (await viewer.call("system.status", "kernel://")).payload as { sessions: Record<string, unknown>[] };
      assert.ok(own.sessions.length > 0 && own.sessions.every((s) => !("pid" in s)));
    });
  });
});

describe("the peer process is read at the first HELLO, not at accept", () => {
  it("connections that never say HELLO cost no peer read; a session's HELLO reads its peer once", {
    skip: !linux && "SO_PEERCRED is Linux's",
  }, async () => {
    // The addon the kernel loaded (one module per file): its reads counted.
    const addon = createRequire(import.meta.url)("../../build/Release/peercred.node") as { peer: (fd: number) => unknown };
    const peer = addon.peer;
    let reads = 0;
    addon.peer = (fd) => {
      reads++;
      return peer(fd);
    };
    const raw: net.Socket[] = [];
    try {
      await withKernel({}, async (t) => {
        const admin = await t.admin();
        const sessions = (t.k as unknown as { services: { sessions: { all(): unknown[] } } }).services.sessions;
        const before = sessions.all().length;
        reads = 0;
        // A flood's connections, accepted (each a half-open session) and silent.
        for (let i = 0; i < 5; i++) raw.push(net.connect(t.k.socketPath));
        await until(() => sessions.all().length >= before + 5 || undefined, 30_000, "the connections accepted");
        assert.equal(reads, 0, "no peer read for connections that said nothing");
        await admin.call("system.status", "kernel://");
        assert.equal(reads, 0, "nor for the operator's status, which lists them");
        const c = await t.admin();
        assert.equal(reads, 1, "one read, at the session's HELLO");
        assert.equal((openedBy(allAudit(t.k), c.persona).at(-1)?.process as { pid?: number } | undefined)?.pid, process.pid);
        await c.close();
        await admin.close();
      });
    } finally {
      addon.peer = peer;
      for (const s of raw) s.destroy();
    }
  });
});

describe("a loopback TCP peer's owner (sock_diag)", () => {
  it("a connection no longer there, whose peer address and port a listener holds, names no user: the look-up's fallback to that listener is not its owner", {
    skip: !linux || loopbackOwnerReader().reason !== undefined,
  }, async () => {
    const { read } = loopbackOwnerReader();
    const srv = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    try {
      const port = (srv.address() as net.AddressInfo).port;
      // A live connection: its owner is this process's user.
      const c = net.connect(port, "127.0.0.1");
      await new Promise<void>((r) => c.once("connect", () => r()));
      const live = { remoteAddress: c.localAddress, remotePort: c.localPort, localAddress: "127.0.0.1", localPort: port };
      assert.equal(read(live as net.Socket), process.getuid?.());
      c.destroy();
      // No connection has this 4-tuple; Linux's look-up then answers with the listener at the
      // "peer's" address and port, owned by whoever listens there (here: this process's user).
      const gone = { remoteAddress: "127.0.0.1", remotePort: port, localAddress: "127.0.0.1", localPort: 1 };
      assert.equal(typeof read(gone as net.Socket), "string");
    } finally {
      srv.close();
    }
  });
});
