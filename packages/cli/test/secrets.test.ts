import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Kernel } from "@kpip/kernel";
import { generateIdentity, serializeIdentity } from "@kpip/protocol";
import { outputIncludes } from "@kpip/protocol/testing";
import { placeNew } from "../src/util.js";
import { mintArgs } from "./run.js";

const MAIN = fileURLToPath(new URL("../src/main.js", import.meta.url));
const kpip = (args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}) => {
  const env = { ...process.env, ...opts.env };
  if (!opts.env?.KPIP_TOKEN) delete env.KPIP_TOKEN;
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8", env, input: opts.input ?? "" });
  return { code: r.status, out: r.stdout, err: r.stderr };
};
const WARNING = /a token on the command line is readable by every local user/;

describe("secrets on the command line and the home, with the CLI as a real process", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-secrets-"));
  const h = ["--home", home];
  let kernel: ChildProcess;
  before(async () => {
    kernel = spawn(process.execPath, [MAIN, "kernel", ...h, "--log-level", "silent"], { stdio: ["ignore", "pipe", "inherit"] });
    await outputIncludes(kernel, "is running");
  });
  after(async () => {
    const exited = new Promise((r) => kernel.once("exit", r));
    kernel.kill("SIGTERM");
    await exited;
    rmSync(home, { recursive: true, force: true });
  });

  it("tokens travel by file, standard input or KPIP_TOKEN without a warning; raw token text is warned about", () => {
    const created = JSON.parse(kpip(["persona", "create", "alice", "--json", ...h]).out);
    const file = join(home, "alice.token");
    const mint = kpip(mintArgs("alice", "system.*:kernel://", "--out", file, ...h));
    assert.equal(mint.code, 0, mint.err);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(kpip(mintArgs("alice", "system.*:kernel://", "--out", file, ...h)).code, 2, "never over an existing file");
    const token = readFileSync(file, "utf8").trim();
    const as = ["call", "system.health", "--identity", created.identity, ...h];
    for (const [how, r] of [
      ["@file", kpip([...as, "--token", `@${file}`])],
      ["stdin", kpip([...as, "--token", "-"], { input: `${token}\n` })],
      ["env", kpip(as, { env: { KPIP_TOKEN: token } })],
      ["env @file", kpip(as, { env: { KPIP_TOKEN: `@${file}` } })],
    ] as const) {
      assert.equal(r.code, 0, `${how}: ${r.err}`);
      assert.doesNotMatch(r.err, WARNING, how);
    }
    const raw = kpip([...as, "--token", token]);
    assert.equal(raw.code, 0, raw.err);
    assert.match(raw.err, WARNING);
    assert.match(raw.err, /@FILE, - \(standard input\) or set KPIP_TOKEN/);
    const inspect = kpip(["token", "inspect", "-", ...h], { input: token });
    assert.equal(inspect.code, 0, inspect.err);
    assert.doesNotMatch(inspect.err, WARNING);
    assert.match(kpip(["token", "inspect", token, ...h]).err, WARNING);
  });

  it("a symlinked home is refused with a plain error, no stack trace", () => {
    const real = mkdtempSync(join(tmpdir(), "kpip-real-"));
    const link = `${real}-link`;
    try {
      symlinkSync(real, link);
      const r = kpip(["kernel", "--home", link, "--log-level", "silent"]);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, /^kpip kernel: kernel home .* is a symbolic link/);
      assert.doesNotMatch(r.err, /internal error|\n\s+at /);
    } finally {
      rmSync(link, { force: true });
      rmSync(real, { recursive: true, force: true });
    }
  });
});

describe("a socket of another user's where the kernel's should be", () => {
  // Only root can act as two users; CI runs as root.
  const skip = process.getuid?.() === 0 ? false : "NOT RUN: needs root, to run the CLI as another user";

  it("gets nothing from the CLI: no connection, so no signature and no token; exit 2 naming the socket's owner", {
    skip,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-fake-kernel-"));
    chmodSync(dir, 0o755);
    const identity = join(dir, "admin.identity");
    writeFileSync(identity, serializeIdentity(generateIdentity("admin")), { mode: 0o644 });
    // Root's listener at the path (another user's, for the CLI run as nobody): it keeps all it hears.
    let heard = 0;
    const fake = createServer((s) => {
      heard++;
      s.on("data", () => {});
    });
    const sock = join(dir, "kernel.sock");
    await new Promise<void>((r) => fake.listen(sock, r));
    chmodSync(sock, 0o777);
    try {
      const cli = spawn(process.execPath, [MAIN, "call", "system.health", "--socket", sock, "--identity", identity], {
        uid: 65534,
        gid: 65534,
        stdio: ["ignore", "pipe", "pipe"],
      });
      let err = "";
      cli.stderr.on("data", (d: Buffer) => {
        err += d;
      });
      const code = await new Promise<number | null>((r) => cli.once("exit", r));
      assert.equal(code, 2, err);
      assert.match(err, /the socket .*kernel\.sock belongs to uid 0, not to this user \(uid 65534\)/);
      // The fake has had every chance to accept (the CLI has exited): a connection would be in by now.
      await new Promise((r) => setImmediate(r));
      assert.equal(heard, 0, "no connection reached the fake kernel");
    } finally {
      fake.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("gets nothing either from a socket of the CLI's own user in a directory another user can change (it could be swapped between the check and the connect); one in a sticky directory is connected to", {
    skip,
  }, async () => {
    const base = mkdtempSync(join(tmpdir(), "kpip-fake-dir-"));
    chmodSync(base, 0o755);
    const identity = join(base, "admin.identity");
    writeFileSync(identity, serializeIdentity(generateIdentity("admin")), { mode: 0o644 });
    const run = async (mode: number) => {
      const dir = join(base, mode.toString(8));
      mkdirSync(dir);
      chmodSync(dir, mode); // root's: only root (trusted) and, by its mode, everyone else may change it
      let heard = 0;
      let cli: ChildProcess | undefined;
      const fake = createServer((s) => {
        heard++;
        s.destroy();
        cli?.kill("SIGKILL"); // it connected: that is all this asks (it would retry its connect)
      });
      const sock = join(dir, "kernel.sock");
      await new Promise<void>((r) => fake.listen(sock, r));
      chownSync(sock, 65534, 65534); // the CLI's own: the owner check alone lets it through
      try {
        const child = spawn(process.execPath, [MAIN, "call", "system.health", "--socket", sock, "--identity", identity], {
          uid: 65534,
          gid: 65534,
          stdio: ["ignore", "pipe", "pipe"],
        });
        cli = child;
        let err = "";
        child.stderr.on("data", (d: Buffer) => {
          err += d;
        });
        const code = await new Promise<number | null>((r) => child.once("exit", r));
        await new Promise((r) => setImmediate(r));
        return { code, err, heard };
      } finally {
        fake.close();
      }
    };
    try {
      // World-writable without the sticky bit: anyone may rename the socket away and put theirs there.
      const open = await run(0o777);
      assert.equal(open.code, 2, open.err);
      assert.match(open.err, /kernel\.sock is not to be trusted: its directory .* is writable by others/);
      assert.equal(open.heard, 0, "no connection reached the fake kernel");
      // Sticky (like /tmp): only the socket's owner, the directory's and root may rename or remove it.
      const sticky = await run(0o1777);
      assert.doesNotMatch(sticky.err, /not to be trusted/);
      assert.ok(sticky.heard >= 1, sticky.err);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe("placing a finished identity file (persona create --out)", () => {
  it("never replaces a file or link that took the name after the check; the identity is kept at its temporary name", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-place-"));
    try {
      const tmp = join(dir, "p.identity.1.tmp");
      const file = join(dir, "p.identity");
      writeFileSync(tmp, "identity");
      // the operator's own file, made while the key was being registered
      writeFileSync(file, "mine");
      assert.equal(placeNew(tmp, file), false);
      assert.equal(readFileSync(file, "utf8"), "mine");
      assert.equal(readFileSync(tmp, "utf8"), "identity");
      // a dangling link put at the name: not followed, not replaced
      const elsewhere = join(dir, "elsewhere");
      const linked = join(dir, "q.identity");
      symlinkSync(elsewhere, linked);
      assert.equal(placeNew(tmp, linked), false);
      assert.equal(existsSync(elsewhere), false);
      // the name still free: placed, the temporary name gone
      const free = join(dir, "r.identity");
      assert.equal(placeNew(tmp, free), true);
      assert.equal(readFileSync(free, "utf8"), "identity");
      assert.equal(existsSync(tmp), false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("a home the CLI writes in, prepared by someone else", () => {
  it("a link planted in it, or a home another user owns, is refused by persona and the root key commands before anything is written: nothing through the link", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-prepared-"));
    const outside = mkdtempSync(join(tmpdir(), "kpip-outside-"));
    const h = ["--home", home];
    try {
      // A home a real kernel made, stopped: the commands below go offline.
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      await k.stop();
      const victim = join(outside, "victim");
      writeFileSync(victim, "theirs\n");
      rmSync(join(home, "kernel.db-offline"), { force: true });
      // Whoever could write the home (its owner, for a root operator helping them) plants links.
      symlinkSync(victim, join(home, "kernel.db-offline"));
      for (const args of [
        ["persona", "create", "carol"],
        ["persona", "list"],
        ["token", "rotate-key"],
      ]) {
        const r = kpip([...args, ...h]);
        assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
        assert.match(r.err, /kernel\.db-offline is a symbolic link/);
      }
      assert.equal(readFileSync(victim, "utf8"), "theirs\n", "nothing appended through the link");
      rmSync(join(home, "kernel.db-offline"));
      symlinkSync(outside, join(home, "personas"));
      const r = kpip(["persona", "create", "carol", ...h]);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, /personas is a symbolic link/);
      assert.equal(existsSync(join(outside, "carol.identity")), false, "no identity file put through the link");
      rmSync(join(home, "personas"));
      // Only root can give a home away; CI runs as root.
      if (process.getuid?.() === 0) {
        chownSync(home, 65534, 65534);
        const theirs = kpip(["persona", "create", "carol", ...h]);
        assert.equal(theirs.code, 2, theirs.err);
        assert.match(theirs.err, /belongs to uid 65534/);
        assert.equal(existsSync(join(home, "personas")), false, "nothing made in their home");
        chownSync(home, process.getuid(), process.getgid?.() ?? 0);
      }
      const ok = kpip(["persona", "create", "carol", ...h]);
      assert.equal(ok.code, 0, ok.err);
    } finally {
      rmSync(home, { recursive: true, force: true });
      rmSync(outside, { recursive: true, force: true });
    }
  });
});
