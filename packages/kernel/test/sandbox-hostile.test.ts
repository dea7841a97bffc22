// Hostile programs as real processes in the process sandbox: each tries to reach what the
// kernel must keep from it, and each fails; the kernel keeps serving; nothing outlives it.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  watch,
  writeFileSync,
} from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { KernelClient } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import { outputIncludes } from "@kpip/protocol/testing";
import { HOME_FILES, ROOT_KEYS_FILE } from "../src/index.js";
import { Sandbox } from "../src/sandbox/sandbox.js";
import {
  addPersonaKey,
  connectAdminOf,
  KERNEL_ENTRY,
  kernelForSuite,
  klass,
  removeHome,
  SANDBOX_READ_PATHS,
  sandboxSkip,
  until,
  withKernel,
} from "./harness.js";

/** Runs `sh -c script` as a compute command; the script always exits 0 and says what happened. */
async function sh(c: KernelClient, script: string, extra: Record<string, unknown> = {}): Promise<string> {
  const d = await c.call("compute.submit", "op://command/sh", { args: ["-c", `${script}; exit 0`], ...extra });
  const r = (await c.ops.wait((d.payload as { op: string }).op)) as { stdout: Uint8Array; stderr: Uint8Array };
  return `${Buffer.from(r.stdout).toString()}${Buffer.from(r.stderr).toString()}`;
}

/** Pids of host processes whose command line contains `marker`. */
function processesWith(marker: string): number[] {
  const found: number[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").includes(marker)) found.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** A sleep duration no other process on the machine uses: the marker of an escape attempt. */
const marker = () => String(400_000 + Math.floor(Math.random() * 500_000));

describe("the process sandbox against hostile programs", { skip: sandboxSkip }, () => {
  const s = kernelForSuite({ sandboxProcesses: 48 });
  const secret = (f: string) => join(s.t.home, f);

  const assertServing = async () => {
    assert.equal(((await s.admin.call("system.health", "kernel://")).payload as { status: string }).status, "ok");
  };

  it("cannot see the kernel home", async () => {
    const out = await sh(s.admin, `ls -a ${s.t.home} 2>&1; ls -a ${join(s.t.home, "..")} 2>&1 | grep -c kpip-`);
    assert.match(out, /No such file or directory/);
    assert.doesNotMatch(out, /kernel\.db|kernel\.key/);
    await assertServing();
  });

  it("cannot read the token keys", async () => {
    const keys = readFileSync(secret(ROOT_KEYS_FILE), "utf8");
    const out = await sh(s.admin, `cat ${secret(ROOT_KEYS_FILE)} 2>&1; cat ${secret(HOME_FILES.kernelKey)} 2>&1`);
    assert.match(out, /No such file or directory/);
    assert.ok(!out.includes(keys.slice(0, 40)), out);
    await assertServing();
  });

  it("cannot read the database", async () => {
    const out = await sh(s.admin, `head -c 64 ${secret(HOME_FILES.database)} 2>&1; ls ${secret("")} 2>&1`);
    assert.match(out, /No such file or directory/);
    assert.doesNotMatch(out, /SQLite format/);
    await assertServing();
  });

  it("cannot read an object's body in the file store", async () => {
    // A body above objectInlineBytes is a file under <home>/objects, named by its SHA-256.
    const body = Buffer.alloc(200_000, "OBJECT-BODY-MARKER-");
    await s.admin.storage.write("obj://private/big", body);
    const hex = createHash("sha256").update(body).digest("hex");
    const file = secret(join("objects", "sha256", hex.slice(0, 2), hex.slice(2)));
    assert.ok(readFileSync(file).equals(body), "the body is there, outside the sandbox");
    const out = await sh(s.admin, `head -c 64 ${file} 2>&1; ls -R ${secret("objects")} 2>&1`);
    assert.match(out, /No such file or directory/);
    assert.doesNotMatch(out, /OBJECT-BODY-MARKER/);
    assert.doesNotMatch(out, /^[0-9a-f]{62}$/m, "no body is listed");
    await assertServing();
  });

  it("cannot read identity files or tokens", async () => {
    const out = await sh(s.admin, `cat ${secret(HOME_FILES.adminIdentity)} ${secret(HOME_FILES.adminToken)} 2>&1`);
    assert.match(out, /No such file or directory/);
    assert.doesNotMatch(out, /privateKey|identity\/v1/);
    await assertServing();
  });

  it("cannot read the kernel's /proc entries: environ and cwd", async () => {
    const pid = process.pid;
    const out = await sh(
      s.admin,
      `cat /proc/${pid}/environ 2>&1; readlink /proc/${pid}/cwd 2>&1; echo; ls /proc | grep -c '^[0-9]'; cat /proc/1/environ | tr '\\0' '\\n'`,
    );
    assert.ok(!out.includes(s.t.home), out);
    // readlink of the kernel's cwd would print it alone on a line (the checkout may still appear
    // inside PATH: it is a read path the tests give the sandbox for their agent scripts)
    assert.ok(!out.split("\n").includes(process.cwd()), out);
    // Only the sandbox's own few processes exist in its PID namespace.
    const counts = out.split("\n").filter((l) => /^\d+$/.test(l));
    assert.ok(counts.length >= 1 && Number(counts[0]) < 10, out);
    assert.doesNotMatch(out, /KPIP_HOME|PWD=/);
    await assertServing();
  });

  it("cannot read another persona's scratch directory", async () => {
    const alice = await s.t.persona("alice", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
    const bob = await s.t.persona("bob", [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }]);
    const a = await s.t.connect(alice.identity, [alice.token]);
    const b = await s.t.connect(bob.identity, [bob.token]);
    const ag = await a.agents.spawn("sh", "keeper", {
      args: ["-c", "echo alice-private > /scratch/note; echo ready; exec sleep 300"],
      rights: [],
      lifetimeMs: 60_000,
    });
    await until(async () =>
      Buffer.from((await a.agents.logs("agent://sh/keeper")).stdout)
        .toString()
        .includes("ready"),
    );
    const rec = s.t.k.inspect.getAgent("alice/sh/keeper");
    assert.ok(rec && !rec.cwd.startsWith(s.t.home), "the scratch directory lies outside the home");
    const out = await sh(b, `cat ${rec.cwd}/note 2>&1; ls ${join(rec.cwd, "..")} 2>&1; cat /scratch/note 2>&1`);
    assert.ok(!out.includes("alice-private"), out);
    assert.match(out, /No such file or directory/);
    await a.agents.kill(ag.agent as string);
    await until(async () => (await a.agents.status("agent://sh/keeper")).state === "killed");
    await until(() => !readdirSync(join(rec.cwd, "..")).includes(rec.cwd.split("/").pop() as string), 10_000, "scratch removed");
  });

  it("a set-user-id program a sandbox leaves in /scratch, its directory opened to all, runs for no other local user: the scratch root admits only the sandbox's user", async () => {
    // /scratch is a directory on the host's disk, owned there by the user the sandbox runs as
    // (sandboxUid under a root kernel, else the kernel's own user): a program there that the
    // sandbox marks set-user-id is that user's on the host, for whoever can reach it.
    const ag = await s.admin.agents.spawn("sh", "setuid", {
      args: ["-c", "cp /usr/bin/id /scratch/id && chmod 4755 /scratch/id && chmod 755 /scratch && echo ready; exec sleep 300"],
      rights: [],
      lifetimeMs: 60_000,
    });
    await until(async () =>
      Buffer.from((await s.admin.agents.logs("agent://sh/setuid")).stdout)
        .toString()
        .includes("ready"),
    );
    const rec = s.t.k.inspect.getAgent(`${s.t.k.config.adminPersona}/sh/setuid`);
    assert.ok(rec);
    const planted = join(rec.cwd, "id");
    assert.ok((statSync(planted).mode & 0o4000) !== 0, "the sandbox could mark its program set-user-id");
    const root = statSync(dirname(rec.cwd));
    const asRoot = process.getuid?.() === 0;
    // Nobody but the kernel's user and (under a root kernel) the sandbox's group passes through the root.
    assert.equal(root.mode & 0o007, 0, `the scratch root is ${(root.mode & 0o777).toString(8)}: others pass through it`);
    if (asRoot) {
      assert.equal(root.gid, 65534, "the sandbox's group passes through the root, no other");
      assert.equal(root.mode & 0o070, 0o010);
      // Any other local user: the program is not reached, so not run as the sandbox's user.
      const r = spawnSync(planted, [], { uid: 4242, gid: 4242, encoding: "utf8" });
      assert.equal((r.error as NodeJS.ErrnoException | undefined)?.code, "EACCES", `${r.stdout}${r.stderr}`);
      assert.doesNotMatch(r.stdout ?? "", /euid=65534/);
    } else assert.equal(root.mode & 0o070, 0, "the sandbox runs as the kernel's own user: nobody else needs the root");
    await s.admin.agents.kill(ag.agent as string);
    await until(async () => (await s.admin.agents.status("agent://sh/setuid")).state === "killed");
    await assertServing();
  });

  it("cannot open a network connection without a grant; can with sandbox.network", async () => {
    let accepted = 0;
    const server = net.createServer((sock) => {
      accepted++;
      sock.destroy();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as net.AddressInfo).port;
    const dial = `require("net").connect(${port},"127.0.0.1").on("connect",()=>{console.log("CONNECTED");process.exit(0)}).on("error",e=>{console.log("ERR",e.code);process.exit(0)})`;
    try {
      const c = s.admin;
      const denied = (await c.ops.wait(await c.compute.command("node", ["-e", dial]))) as { stdout: Uint8Array };
      assert.match(Buffer.from(denied.stdout).toString(), /ERR (ECONNREFUSED|ENETUNREACH|EADDRNOTAVAIL)/);
      assert.equal(accepted, 0);
      const p = await s.t.persona("netless", [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }]);
      const pc = await s.t.connect(p.identity, [p.token]);
      const refused = await pc.call("compute.submit", "op://command/node", { args: ["-e", dial], network: true }).catch((e) => e);
      assert.equal((refused as { errorClass?: string }).errorClass, "PERMISSION");
      const d = await c.call("compute.submit", "op://command/node", { args: ["-e", dial], network: true });
      const ok = (await c.ops.wait((d.payload as { op: string }).op)) as { stdout: Uint8Array };
      assert.match(Buffer.from(ok.stdout).toString(), /CONNECTED/);
    } finally {
      server.close();
    }
    await assertServing();
  });

  /** An agent starts `escapeBy(marker)` and goes on; killing the agent must end the escaped process too. */
  const escapes = async (escapeBy: (m: string) => string) => {
    const m = marker();
    await s.admin.agents.spawn("sh", `esc-${m}`, {
      args: ["-c", `${escapeBy(m)}\necho started\nexec sleep 300`],
      rights: [],
      lifetimeMs: 60_000,
    });
    await until(() => processesWith(m).length > 0, 30_000, "the escaped process runs");
    await s.admin.agents.kill(`agent://sh/esc-${m}`);
    await until(async () => (await s.admin.agents.status(`agent://sh/esc-${m}`)).state === "killed", 30_000, "killed");
    await until(() => processesWith(m).length === 0, 30_000, "nothing survives the agent");
    await assertServing();
  };

  it("an agent escaping with setsid is killed with it", () => escapes((m) => `setsid sleep ${m} > /dev/null 2>&1 &`));

  it("an agent escaping with a double fork is killed with it", () => escapes((m) => `(sh -c 'sleep ${m} > /dev/null 2>&1 &' &)`));

  it("a crashing process dumps no core, and cannot raise its core limit: nothing for a core_pattern helper to run as root on the host", async () => {
    // The kernel's hard core limit is often unlimited (a systemd service's is): its soft one was
    // raised to it, and a crash written to /scratch, or piped to the host's helper.
    const out = await sh(
      s.admin,
      `ulimit -c unlimited 2>/dev/null && echo RAISED; sh -c 'kill -SEGV $$'; cd /scratch && ls; echo LISTED`,
    );
    assert.match(out, /LISTED/);
    assert.doesNotMatch(out, /RAISED/);
    assert.doesNotMatch(out, /^core/m);
    await assertServing();
  });

  it("no real-time scheduling or raised priority, whatever hard limits the kernel inherited", async () => {
    const out = await sh(
      s.admin,
      "grep -E 'Max (realtime|nice) priority' /proc/self/limits; chrt -f 1 true 2>/dev/null && echo REALTIME; [ \"$(nice -n -5 cut -d' ' -f19 /proc/self/stat 2>/dev/null)\" = -5 ] && echo RAISED; echo DONE",
    );
    assert.match(out, /Max nice priority\s+0\s+0/);
    assert.match(out, /Max realtime priority\s+0\s+0/);
    assert.match(out, /DONE/);
    assert.doesNotMatch(out, /REALTIME|RAISED/);
  });

  it("an argument with a NUL byte is refused SEMANTIC by its place among the persona's arguments, before anything starts", async () => {
    const d = await s.admin.call("compute.submit", "op://command/sh", { args: ["-c", "echo ran", "x\u0000y"] });
    await assert.rejects(s.admin.ops.wait((d.payload as { op: string }).op), (e: Error & { errorClass?: string }) => {
      assert.equal(e.errorClass, "SEMANTIC");
      assert.match(e.message, /argument 2 contains a NUL byte/);
      assert.doesNotMatch(e.message, /args\[\d+\]/, "nothing of bubblewrap's command line");
      return true;
    });
    await assertServing();
  });

  it("a command line longer than exec takes is refused SEMANTIC before anything starts, not taken for the host's failure", async () => {
    // One argument past Linux's bound on one (128 KiB), and forty within it that exec refuses together (E2BIG):
    // the spawn threw, and the op failed INTERNAL "the kernel could not prepare its sandbox", on the record too.
    const cases: [string, string[], RegExp][] = [
      ["long", ["-c", "echo ran", "x".repeat(200_000)], /argument 2 is 200000 bytes/],
      ["many", ["-c", "echo ran", ...Array(40).fill("y".repeat(100_000))], /the command line takes \d+ bytes/],
    ];
    for (const [what, args, message] of cases) {
      const d = await s.admin.call("compute.submit", "op://command/sh", { args });
      const op = (d.payload as { op: string }).op;
      await assert.rejects(s.admin.ops.wait(op), (e: Error & { errorClass?: string }) => {
        assert.equal(e.errorClass, "SEMANTIC", `${what}: ${e.message}`);
        assert.match(e.message, message);
        return true;
      });
      const states = s.t.k.inspect
        .queryAudit({ op: "op.state", limit: 1000 })
        .map((r) => JSON.parse(r.detail ?? "null") as { op: string; state: string; errorClass?: string })
        .filter((r) => `op://${r.op}` === op && r.state === "failed");
      assert.deepEqual(
        states.map((r) => r.errorClass),
        ["SEMANTIC"],
        `${what}: the record says the persona's request was wrong, not the host`,
      );
    }
    const alice = await s.t.persona("argv-alice", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
    const a = await s.t.connect(alice.identity, [alice.token]);
    await assert.rejects(
      a.call("agent.spawn", "agent://sh/long", { args: ["-c", "sleep 60", "x".repeat(200_000)], rights: [], lifetimeMs: 60_000 }),
      klass("SEMANTIC", "argument 2 is 200000 bytes"),
    );
    assert.deepEqual(await a.agents.list(), [], "no agent was started");
    assert.deepEqual(
      s.t.k.inspect
        .queryAudit({ op: "persona.added", limit: 1000 })
        .filter((r) => r.target === "persona://argv-alice/agent.long"),
      [],
      "nor a key or token made for it",
    );
    // The largest argument exec takes still runs.
    const d = await s.admin.call("compute.submit", "op://command/sh", {
      args: ["-c", 'printf %s "$1" | wc -c', "sh", "z".repeat(128 * 1024 - 1)],
    });
    const r = (await s.admin.ops.wait((d.payload as { op: string }).op)) as { stdout: Uint8Array };
    assert.equal(Buffer.from(r.stdout).toString().trim(), String(128 * 1024 - 1));
    await assertServing();
  });

  it("opens no pseudo-terminal from the host's shared pool unless sandboxPtys allows it", async () => {
    // Every devpts but the host's first draws on one pool (kernel.pty.max less kernel.pty.reserve,
    // 3,072 by default) that no RLIMIT bounds: one command's four processes held 3,072 terminals,
    // and every other sandbox (any persona's) — and any container on the host — got ENOSPC.
    const probe = "if (exec 3<>/dev/ptmx) 2>/dev/null; then echo got-a-pty; else echo no-pty; fi; ls -A /dev/pts | wc -l";
    const out = await sh(s.admin, probe);
    assert.match(out, /no-pty/);
    assert.doesNotMatch(out, /got-a-pty/);
    assert.match(out, /^0$/m, "/dev/pts is empty");
    await withKernel({ sandboxPtys: 1 }, async (t) => {
      const admin = await t.admin();
      assert.match(await sh(admin, probe), /got-a-pty/, "an operator who allows them gets them");
    });
    await assertServing();
  });

  it("a fork bomb stops at the sandbox's process bound", async () => {
    const m = marker();
    // In a subshell: the shell gives up ("Cannot fork") when the bound is reached.
    const out = await sh(s.admin, `(i=0; while [ $i -lt 2000 ]; do sleep ${m} & i=$((i+1)); echo "n=$i"; done) 2>&1`);
    const started = Math.max(...[...out.matchAll(/n=(\d+)/g)].map((x) => Number(x[1])));
    assert.ok(started < 48, `at most the bound: ${started}`);
    assert.match(out, /fork|Resource temporarily unavailable/i);
    await until(() => processesWith(m).length === 0, 10_000, "the bomb's processes end with its sandbox");
    await assertServing();
  });
});

/** The keyring's system calls (add_key, keyctl) where the test knows them. */
const KEY_CALLS: Record<string, { addKey: number; keyctl: number; memfdCreate: number }> = {
  x64: { addKey: 248, keyctl: 250, memfdCreate: 319 },
  arm64: { addKey: 217, keyctl: 219, memfdCreate: 279 },
};
const keyCalls = KEY_CALLS[process.arch];
const PERL = "/usr/bin/perl";
const keyringSkip =
  sandboxSkip ||
  (!keyCalls
    ? `NOT RUN: no keyring syscall numbers for ${process.arch}`
    : !existsSync(PERL)
      ? "NOT RUN: needs /usr/bin/perl"
      : false);

describe("memory no bound of the sandbox counts", { skip: keyringSkip }, () => {
  const s = kernelForSuite({ sandboxMemoryBytes: 256 * 1024 * 1024 });
  it("a sandboxed process makes no memfd and no System V segment, queue or semaphore set: POSIX shared memory, in the sized /dev/shm, stays", async () => {
    // A memfd is written with write(2), never mapped: one process under this 256 MiB address
    // space held 532 MiB of the host's memory in eight of them (and could hold its open-file bound
    // of them, each up to sandboxFileBytes); System V segments, written through a mapping dropped
    // at once, 466 MiB, kept until the sandbox ended. /tmp and /dev/shm are sized; these were not.
    const { memfdCreate } = keyCalls ?? { memfdCreate: 0 };
    const script = `use IPC::SysV qw(IPC_PRIVATE IPC_CREAT S_IRUSR S_IWUSR);
      my $n = "m"; my $fd = syscall(${memfdCreate}, $n, 0); print $fd < 0 ? "memfd: $!\n" : "memfd made\n";
      my $shm = shmget(IPC_PRIVATE, 1 << 20, IPC_CREAT | S_IRUSR | S_IWUSR); print defined $shm ? "shm made\n" : "shmget: $!\n";
      my $msg = msgget(IPC_PRIVATE, IPC_CREAT | S_IRUSR | S_IWUSR); print defined $msg ? "msg made\n" : "msgget: $!\n";
      my $sem = semget(IPC_PRIVATE, 1, IPC_CREAT | S_IRUSR | S_IWUSR); print defined $sem ? "sem made\n" : "semget: $!\n";
      open(my $h, ">", "/dev/shm/posix") or die "shm_open: $!"; print $h "x" x 4096; close($h); print "posix shm made\n";`;
    const d = await s.admin.call("compute.submit", "op://command/perl", { args: ["-e", script] });
    const r = (await s.admin.ops.wait((d.payload as { op: string }).op)) as { stdout: Uint8Array };
    const out = Buffer.from(r.stdout).toString();
    for (const call of ["memfd", "shmget", "msgget", "semget"])
      assert.match(out, new RegExp(`${call}: Operation not permitted`), out);
    assert.doesNotMatch(out, /^(memfd|shm|msg|sem) made$/m, out);
    assert.match(out, /posix shm made/);
  });
});

/** sendmsg(2)'s number where the test knows it (its struct msghdr is laid out as on x86-64). */
const SENDMSG: Record<string, number> = { x64: 46, arm64: 211 };

describe("a socket whose close waits, handed to the kernel", { skip: keyringSkip }, () => {
  const s = kernelForSuite();
  it("a sandboxed process can give no socket a linger time, nor make an io_uring that could: a TCP socket it hands over its stdout closes at once in the kernel, which keeps serving", async () => {
    // A descriptor sent over the agent's stdout (SCM_RIGHTS) is dropped by the kernel's read, its
    // last reference closed in the kernel's thread: a TCP socket on the sandbox's loopback with
    // unsent data its peer (kept open, never read) does not take, and a linger time, held the
    // kernel's event loop in that close for the linger's length (15 s measured for 15, no request
    // answered, no deadline or kill run). 120 here: without the filter the test stalls that long.
    const script = `use Socket; use Fcntl;
      socket(my $l, PF_INET, SOCK_STREAM, 0) or die "socket: $!"; bind($l, pack_sockaddr_in(0, inet_aton("127.0.0.1"))) or die "bind: $!";
      listen($l, 1) or die "listen: $!"; my ($port) = unpack_sockaddr_in(getsockname($l));
      socket(my $c, PF_INET, SOCK_STREAM, 0) or die; connect($c, pack_sockaddr_in($port, inet_aton("127.0.0.1"))) or die "connect: $!";
      accept(my $peer, $l) or die "accept: $!";
      fcntl($c, F_SETFL, O_NONBLOCK); my $b = "x" x 65536; my $q = 0; while (1) { my $n = send($c, $b, 0); last unless defined $n; $q += $n }
      $| = 1; print "queued $q\\n";
      print setsockopt($c, SOL_SOCKET, SO_LINGER, pack("ii", 1, 120)) ? "linger set\\n" : "linger: $!\\n";
      my $params = "\\0" x 120; my $ring = syscall(425, 1, $params); print $ring < 0 ? "io_uring: $!\\n" : "io_uring made\\n";
      my $data = "x"; my $iov = pack("QQ", unpack("Q", pack("p", $data)), 1);
      my $cmsg = pack("QiiiI", 20, 1, 1, fileno($c), 0);
      my $msg = pack("QLx4QQQQix4", 0, 0, unpack("Q", pack("p", $iov)), 1, unpack("Q", pack("p", $cmsg)), 24, 0);
      print syscall(${SENDMSG[process.arch] ?? 0}, 1, $msg, 0) == 1 ? "handed over\\n" : "sendmsg: $!\\n"; close($c);
      sleep 3600;`;
    await s.admin.agents.spawn("perl", "linger", { args: ["-e", script], rights: [], lifetimeMs: 600_000 });
    try {
      let out = "";
      await until(
        async () => {
          const l = await s.admin.agents.logs("agent://perl/linger");
          out = Buffer.from(l.stdout).toString() + Buffer.from(l.stderr).toString();
          return (
            /(handed over|sendmsg: .*)$/m.test(out) || (await s.admin.agents.status("agent://perl/linger")).state !== "running"
          );
        },
        60_000,
        "the socket handed over",
      );
      assert.match(out, /^queued \d+$/m, out);
      assert.match(out, /^linger: Operation not permitted$/m, out);
      assert.match(out, /^io_uring: Operation not permitted$/m, out);
      assert.match(out, /handed over$/m, out);
      assert.equal(((await s.admin.call("system.health", "kernel://")).payload as { status: string }).status, "ok");
    } finally {
      await s.admin.agents.kill("agent://perl/linger");
    }
  });
});

describe("the kernel keyring, which no namespace separates", { skip: keyringSkip }, () => {
  const { addKey, keyctl } = keyCalls ?? { addKey: 0, keyctl: 0 };
  // Perl's syscall passes a variable's string by pointer (a literal would be read-only).
  /** Adds a "user" key `name` = `value` to the session keyring (-3), says how it went. */
  const add = (name: string, value: string) =>
    `my ($t,$d,$v)=("user","${name}","${value}"); my $id=syscall(${addKey},$t,$d,$v,length($v),-3); print $id<0 ? "add ${name}: $!\n" : "added ${name}\n";`;
  /** Finds the "user" key `name` in the session keyring (KEYCTL_SEARCH) and prints its value (KEYCTL_READ). */
  const read = (name: string) =>
    `my ($t,$d)=("user","${name}"); my $k=syscall(${keyctl},10,-3,$t,$d,0); if ($k<0) { print "search ${name}: $!\n" } else { my $b="\\0" x 256; my $n=syscall(${keyctl},11,$k,$b,256); print "read ${name}: ".substr($b,0,$n)."\n" }`;

  it("a sandboxed process reaches no session keyring: it reads no key of the kernel's, and leaves none for another persona's process", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    // The kernel runs with a session keyring of its own (as a systemd service, or after a login
    // with pam_keyinit, does), holding a key of the host's.
    const host = `my $n="kpip-test"; syscall(${keyctl},1,$n)>=0 or die "join: $!"; ${add("host-secret", "s3cret-of-the-host")} exec @ARGV or die "exec: $!";`;
    const child = spawn(
      PERL,
      [
        "-e",
        host,
        process.execPath,
        KERNEL_ENTRY,
        "--home",
        home,
        "--log-level",
        "silent",
        "--sandbox-read-paths",
        SANDBOX_READ_PATHS,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    try {
      await outputIncludes(child, "is running");
      const admin = await connectAdminOf(home);
      const rights = [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }];
      const personas: KernelClient[] = [];
      for (const id of ["alice", "bob"]) {
        const identity = generateIdentity(id);
        addPersonaKey({ home }, id, identity.publicKey);
        const m = await admin.tokens.mint(id, { rights, ttlMs: 600_000 });
        personas.push(
          await KernelClient.connect({ socket: join(home, "kernel.sock"), identity, tokens: [m.token], reconnect: false }),
        );
      }
      const [alice, bob] = personas as [KernelClient, KernelClient];
      const perl = async (c: KernelClient, script: string) => {
        const r = (await c.ops.wait(await c.compute.command("perl", ["-e", script]))) as { stdout: Uint8Array };
        return Buffer.from(r.stdout).toString();
      };
      const a = await perl(alice, `${read("host-secret")} ${add("left-by-alice", "for-bob")}`);
      const b = await perl(bob, read("left-by-alice"));
      assert.ok(!a.includes("s3cret-of-the-host"), `the kernel's key was read: ${a}`);
      assert.ok(!b.includes("for-bob"), `bob's process read what alice's left: ${b}`);
      assert.match(a, /search host-secret: Operation not permitted/);
      assert.match(a, /add left-by-alice: Operation not permitted/);
      assert.match(b, /search left-by-alice: Operation not permitted/);
      for (const c of [...personas, admin]) await c.close();
    } finally {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
      removeHome(home);
    }
  });
});

describe("the seccomp filter's way to bubblewrap", { skip: keyringSkip }, () => {
  it("goes through a pipe: no file is made for it at a launch, the trial run and a launch are filtered, and the process closes", async () => {
    const { keyctl } = keyCalls ?? { keyctl: 0 };
    const root = mkdtempSync(join(tmpdir(), "kpip-seccomp-"));
    chmodSync(root, 0o711); // the sandbox's uid passes through to its scratch directory
    const scratchRoot = join(root, "r");
    const box = new Sandbox({
      mode: "bwrap",
      readPaths: [],
      scratchRoot,
      uid: 65534,
      hidden: [],
      limits: { processes: 0, memoryBytes: 0, cpuSeconds: 0, fileBytes: 0 },
    });
    // What is made in the scratch root (the filter's file was, beside the scratch directory).
    mkdirSync(scratchRoot, { recursive: true, mode: 0o711 });
    const seen: string[] = [];
    const watcher = watch(scratchRoot, (_, name) => seen.push(String(name)));
    try {
      assert.equal(box.unavailable, undefined, "the trial run (its filter on standard input) ran");
      // KEYCTL_SEARCH in the session keyring: EPERM from the filter (without it: no such key).
      const script = `my ($t,$d)=("user","x"); syscall(${keyctl},10,-3,$t,$d,0); print "keyctl: $!\\n"`;
      const launch = box.launch({
        executable: PERL,
        args: ["-e", script],
        env: { PATH: "/usr/bin:/bin" },
        network: false,
        limits: box.config.limits,
        extra: [],
      });
      const child = spawn(launch.file, launch.args, launch.options);
      launch.spawned(child);
      let out = "";
      child.stdout?.on("data", (d: Buffer) => {
        out += d;
      });
      // "close": every descriptor of the child's closed, the filter's pipe included.
      const code = await new Promise<number | null>((r) => child.once("close", r));
      assert.equal(code, 0, out);
      assert.match(out, /keyctl: Operation not permitted/);
      // A file made after the launch: its event comes after any the launch caused.
      writeFileSync(join(scratchRoot, "sentinel"), "");
      await until(() => seen.includes("sentinel") || undefined, 30_000, "the sentinel's event");
      assert.deepEqual(
        seen.filter((n) => n.endsWith(".seccomp")),
        [],
        "no file for the filter",
      );
      await launch.cleanup();
    } finally {
      watcher.close();
      await box.close(false);
      rmSync(root, { recursive: true, force: true });
    }
  });
});

/**
 * Run in a sandbox (x86-64): forks `sleep <marker>`, then takes over the sandbox's pid 1
 * (bubblewrap's init, which runs as the sandbox's uid): makes it run prctl(PR_SET_PDEATHSIG, 0)
 * through ptrace, puts it back, and writes "exited 0" into its eventfd, from which bubblewrap's
 * monitor (the process the kernel waits for) takes the command's exit status. Then sleeps.
 */
const TAKEOVER = String.raw`
$| = 1;
$SIG{__DIE__} = sub { print "died: $_[0]"; exit 0 };
print "own pdeathsig: ", join(" ", map { syscall(157, 1, $_) == 0 ? "$_ ok" : "$_ $!" } 9, 15, 0), "\n";
if (!fork) { exec "sleep", $ARGV[0]; die "exec: $!" }
open my $maps, "<", "/proc/1/maps" or die "maps: $!";
open my $mem, "<", "/proc/1/mem" or die "mem: $!";
my $gadget;
while (<$maps>) {
  my ($lo, $hi, $perm) = /^([0-9a-f]+)-([0-9a-f]+) (\S+)/ or next;
  next unless $perm =~ /x/;
  sysseek($mem, hex $lo, 0) or next;
  my $n = sysread($mem, my $buf, hex($hi) - hex($lo)) or next;
  my $i = index($buf, "\x0f\x05");
  if ($i >= 0) { $gadget = hex($lo) + $i; last }
}
die "no syscall instruction in pid 1" unless defined $gadget;
syscall(101, 0x4206, 1, 0, 0) == 0 or die "PTRACE_SEIZE: $!";
syscall(101, 0x4207, 1, 0, 0) == 0 or die "PTRACE_INTERRUPT: $!";
waitpid(1, 0x40000000);
my $regs = "\0" x 216;
syscall(101, 12, 1, 0, $regs) == 0 or die "PTRACE_GETREGS: $!";
my @saved = unpack("Q27", $regs);
my @r = @saved;
($r[16], $r[10], $r[15], $r[14], $r[13]) = ($gadget, 157, ~0, 1, 0);
my $set = pack("Q27", @r);
syscall(101, 13, 1, 0, $set) == 0 or die "PTRACE_SETREGS: $!";
syscall(101, 9, 1, 0, 0) == 0 or die "PTRACE_SINGLESTEP: $!";
waitpid(1, 0x40000000);
syscall(101, 12, 1, 0, $regs) == 0 or die "PTRACE_GETREGS: $!";
print "prctl in pid 1: ", unpack("q", substr($regs, 80, 8)), "\n";
my $back = pack("Q27", @saved);
syscall(101, 13, 1, 0, $back) == 0 or die "PTRACE_SETREGS: $!";
syscall(101, 17, 1, 0, 0) == 0 or die "PTRACE_DETACH: $!";
my ($efd) = grep { (readlink("/proc/1/fd/$_") // "") eq "anon_inode:[eventfd]" } map { m{(\d+)$} } glob "/proc/1/fd/*";
defined $efd or die "no eventfd in pid 1";
my $fd = syscall(438, syscall(434, 1, 0), $efd + 0, 0);
$fd >= 0 or die "pidfd_getfd: $!";
open my $ev, ">&=", $fd or die "fdopen: $!";
my $one = pack("Q", 1);
print "telling the monitor\n";
syswrite($ev, $one);
sleep 600;
`;

describe("the sandbox's init, which its program can take over", {
  skip:
    sandboxSkip ||
    (process.arch !== "x64"
      ? "NOT RUN: the takeover is written for x86-64"
      : !existsSync(PERL)
        ? "NOT RUN: needs /usr/bin/perl"
        : false),
}, () => {
  const s = kernelForSuite();

  it("a program that takes over the sandbox's pid 1 (ptrace) cannot clear its parent-death signal: once bubblewrap's monitor ends, nothing of the sandbox is left", async () => {
    const m = marker();
    try {
      const op = await s.admin.compute.command("perl", ["-e", TAKEOVER, m], { timeoutMs: 120_000 });
      const r = (await s.admin.ops.wait(op)) as { stdout: Uint8Array; exitCode: number };
      await until(() => processesWith(m).length === 0, 20_000, "nothing of the sandbox left once its op ended");
      const out = Buffer.from(r.stdout).toString();
      // A parent-death signal other than SIGKILL (clearing it with 0 included) fails: the program's own, and pid 1's.
      assert.match(out, /own pdeathsig: 9 ok 15 Operation not permitted 0 Operation not permitted/);
      assert.match(out, /prctl in pid 1: -1\n/, out);
      // The monitor believed pid 1 and said "exited 0" (the program's to say, as its own exit
      // would); pid 1 died with the monitor, and with it the whole namespace.
      assert.match(out, /telling the monitor/);
    } finally {
      for (const p of processesWith(m)) {
        try {
          process.kill(p, "SIGKILL");
        } catch {
          // gone
        }
      }
    }
  });
});
