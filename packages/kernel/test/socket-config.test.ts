import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ConfigError, HomeInUseError, Kernel, resolveConfig, SocketPathError, SqliteStore, verifyAudit } from "../src/index.js";
import { repeatedJsonKey } from "../src/strict-json.js";
import { KERNEL_ENTRY, removeHome, spawnReady, startKernel } from "./harness.js";

/** A kernel in a child process on `home`; resolves once it listens. */
const childKernel = (home: string) => spawnReady([KERNEL_ENTRY, "--home", home, "--log-level", "silent"], "is running");

describe("socket safety and crash recovery", () => {
  it("after a SIGKILLed kernel: the stale socket is replaced, acknowledged writes and their audit records survive", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    const child = await childKernel(home);
    const probe = new Kernel({ home, logLevel: "silent" }); // only for the paths
    const socket = probe.socketPath;
    const { KernelClient } = await import("@kpip/client");
    const { readFileSync } = await import("node:fs");
    const c = await KernelClient.connect({
      socket,
      identity: join(home, "admin.identity"),
      tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
      reconnect: false,
    });
    const acked = await c.storage.write("obj://ws1/acked", "before the crash");
    assert.equal(acked.generation, 1);
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
    await c.close().catch(() => {});
    assert.ok(lstatSync(socket).isSocket(), "the killed kernel left its socket file");

    const t = await startKernel({}, home);
    const a = await t.admin();
    assert.equal(Buffer.from((await a.storage.read("obj://ws1/acked")).data).toString(), "before the crash");
    const rows = t.k.inspect.queryAudit({ op: "storage.write", limit: 100 }).filter((r) => r.target === "obj://ws1/acked");
    assert.deepEqual(
      rows.map((r) => r.phase),
      ["intent", "outcome"],
      "the acknowledged write's records survived the kill",
    );
    await t.stop();
    const s = new SqliteStore(join(home, "kernel.db"));
    const v = verifyAudit(s);
    s.close();
    assert.ok(v.ok, v.firstBad?.reason);
    removeHome(home);
  });

  it("refuses a socket directory that is a symlink", async () => {
    const base = mkdtempSync(join(tmpdir(), "kpip-"));
    const real = join(base, "real");
    mkdirSync(real, { mode: 0o700 });
    symlinkSync(real, join(base, "link"));
    const k = new Kernel({ home: join(base, "home"), socket: join(base, "link", "k.sock"), logLevel: "silent" });
    await assert.rejects(k.start(), SocketPathError);
    assert.ok(!existsSync(join(real, "k.sock")));
    removeHome(base);
  });

  it("refuses a second kernel on the same socket while the first runs, and the first keeps serving", async () => {
    const t = await startKernel();
    const other = mkdtempSync(join(tmpdir(), "kpip-"));
    const k2 = new Kernel({ home: other, socket: t.k.socketPath, logLevel: "silent" });
    await assert.rejects(
      k2.start(),
      (e: unknown) => e instanceof SocketPathError && /already listening/.test((e as Error).message),
    );
    const c = await t.admin();
    assert.equal((await c.system.health()).status, "ok");
    await t.stop();
    removeHome(t.home);
    removeHome(other);
  });

  it("a kernel whose socket file was replaced by another kernel's does not remove it at stop", async () => {
    const a = await startKernel();
    const base = mkdtempSync(join(tmpdir(), "kpip-"));
    unlinkSync(a.k.socketPath); // someone removed A's socket file; B takes the path
    const b = await startKernel({ socket: a.k.socketPath }, base);
    try {
      await a.stop();
      assert.ok(existsSync(b.k.socketPath), "A's stop left B's socket alone");
      const c = await b.admin();
      assert.equal((await c.system.health()).status, "ok");
    } finally {
      await b.stop();
      removeHome(a.home);
      removeHome(base);
    }
  });
});

describe("configuration precedence", () => {
  const home = () => {
    const h = mkdtempSync(join(tmpdir(), "kpip-"));
    writeFileSync(join(h, "config.json"), JSON.stringify({ maxSessions: 7, maxInFlight: 9, heartbeatMs: 110 }));
    return h;
  };

  it("flags over env over config file over defaults, for the same setting", () => {
    const h = home();
    const env = { KPIP_MAX_SESSIONS: "5", KPIP_MAX_IN_FLIGHT: "6" };
    const c = resolveConfig({ flags: { home: h, maxSessions: "3" }, env });
    assert.equal(c.maxSessions, 3, "flag beats env and file");
    assert.equal(c.maxInFlight, 6, "env beats file");
    assert.equal(c.heartbeatMs, 110, "file beats default");
    assert.equal(c.handshakeTimeoutMs, 5_000, "default");
    assert.equal(c.socket, join(h, "kernel.sock"));
    removeHome(h);
  });

  it("an embedded Kernel reads no KPIP_* from the process environment, only the env it is given", () => {
    const h = home();
    const saved = process.env.KPIP_MAX_IN_FLIGHT;
    process.env.KPIP_MAX_IN_FLIGHT = "3";
    try {
      assert.equal(new Kernel({ home: h }).config.maxInFlight, 9, "the home's config file, not the environment");
      assert.equal(new Kernel({ home: h, env: process.env }).config.maxInFlight, 3, "env given: read");
      assert.equal(new Kernel({ home: h, env: {}, maxInFlight: 4 }).config.maxInFlight, 4);
    } finally {
      if (saved === undefined) delete process.env.KPIP_MAX_IN_FLIGHT;
      else process.env.KPIP_MAX_IN_FLIGHT = saved;
      removeHome(h);
    }
  });

  it("an embedded Kernel reads the config file it is given instead of the home's", () => {
    const h = home();
    const other = join(h, "other.json");
    writeFileSync(other, JSON.stringify({ maxInFlight: 21 }));
    try {
      const k = new Kernel({ home: h, configFile: other });
      assert.equal(k.config.maxInFlight, 21);
      assert.equal(k.config.maxSessions, 1024, "the home's config.json is not read then");
      assert.throws(() => new Kernel({ home: h, configFile: join(h, "missing.json") }), ConfigError);
    } finally {
      removeHome(h);
    }
  });

  it("an explicit config file another user owns, or that group or others may write, is refused: they would choose the kernel's settings (sandbox none)", () => {
    const h = home();
    const shared = mkdtempSync(join(tmpdir(), "kpip-conf-"));
    const file = join(shared, "kernel.json");
    writeFileSync(file, JSON.stringify({ sandbox: "none" }), { mode: 0o600 });
    try {
      assert.equal(new Kernel({ home: h, configFile: file }).config.sandbox, "none", "the user's own file is read");
      chmodSync(file, 0o620);
      assert.throws(
        () => new Kernel({ home: h, configFile: file }),
        (e: unknown) => e instanceof ConfigError && /writable by group or others \(mode 620\)/.test((e as Error).message),
      );
      chmodSync(file, 0o646);
      assert.throws(() => resolveConfig({ flags: { home: h }, env: {}, configFile: file }), /writable by group or others/);
      chmodSync(file, 0o644);
      // Another user's file: only root can make one here.
      if (process.getuid?.() === 0) {
        chownSync(file, 65534, 65534);
        assert.throws(
          () => new Kernel({ home: h, configFile: file }),
          (e: unknown) => e instanceof ConfigError && /belongs to uid 65534/.test((e as Error).message),
        );
      }
    } finally {
      removeHome(h);
      removeHome(shared);
    }
  });

  it("an explicit config file below a directory others may write (no sticky bit) or another user owns is refused, also through a link: they could swap it between its check and its read", () => {
    const h = home();
    const above = mkdtempSync(join(tmpdir(), "kpip-conf-above-"));
    const safe = mkdtempSync(join(tmpdir(), "kpip-conf-safe-"));
    try {
      mkdirSync(join(above, "etc"), { mode: 0o700 });
      const file = join(above, "etc", "kernel.json");
      writeFileSync(file, JSON.stringify({ maxInFlight: 21 }), { mode: 0o600 });
      const read = (f: string) => resolveConfig({ flags: { home: h }, env: {}, configFile: f });
      assert.equal(read(file).maxInFlight, 21, "directories only its user may write: read");
      chmodSync(above, 0o777);
      assert.throws(
        () => read(file),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.message.startsWith(
            `${above}, above config file ${file}, is writable by group or others (mode 777) without the sticky bit`,
          ),
      );
      // Named through a link in a safe directory: the directories above the file it names count too.
      symlinkSync(file, join(safe, "kernel.json"));
      assert.throws(
        () => read(join(safe, "kernel.json")),
        (e: unknown) => e instanceof ConfigError && e.message.includes(above),
      );
      chmodSync(above, 0o1777);
      assert.equal(read(join(safe, "kernel.json")).maxInFlight, 21, "sticky, as /tmp: read");
      if (process.getuid?.() === 0) {
        chmodSync(above, 0o755);
        chownSync(above, 65534, 65534);
        assert.throws(() => new Kernel({ home: h, configFile: file }), /belongs to uid 65534/);
      }
    } finally {
      removeHome(h);
      removeHome(above);
      removeHome(safe);
    }
  });

  it("takes the home from KPIP_HOME and reads that home's config file; an empty env value is ignored", () => {
    const h = home();
    const c = resolveConfig({ env: { KPIP_HOME: h, KPIP_HEARTBEAT_MS: "" } });
    assert.deepEqual([c.home, c.maxSessions, c.heartbeatMs], [h, 7, 110]);
    removeHome(h);
  });

  it("an explicit config file must exist; unknown keys and bad values are ConfigError", () => {
    const h = home();
    assert.throws(() => resolveConfig({ flags: { home: h }, env: {}, configFile: join(h, "missing.json") }), ConfigError);
    writeFileSync(join(h, "bad.json"), JSON.stringify({ heartbeatMS: 5 }));
    assert.throws(
      () => resolveConfig({ flags: { home: h }, env: {}, configFile: join(h, "bad.json") }),
      (e: unknown) => e instanceof ConfigError && /heartbeatMS/.test((e as Error).message),
    );
    writeFileSync(join(h, "arr.json"), "[]");
    assert.throws(() => resolveConfig({ flags: { home: h }, env: {}, configFile: join(h, "arr.json") }), ConfigError);
    for (const bad of ["12abc", "1.5", "0x10", "-3", "0", " 5", "1e3"]) {
      assert.throws(() => resolveConfig({ flags: { home: h, maxSessions: bad }, env: {} }), ConfigError, `flag ${bad}`);
      assert.throws(() => resolveConfig({ flags: { home: h }, env: { KPIP_MAX_SESSIONS: bad } }), ConfigError, `env ${bad}`);
    }
    writeFileSync(join(h, "float.json"), JSON.stringify({ maxSessions: 2.5 }));
    assert.throws(() => resolveConfig({ flags: { home: h }, env: {}, configFile: join(h, "float.json") }), ConfigError);
    writeFileSync(join(h, "type.json"), JSON.stringify({ logLevel: 3 }));
    assert.throws(() => resolveConfig({ flags: { home: h }, env: {}, configFile: join(h, "type.json") }), ConfigError);
    removeHome(h);
  });

  it("a config file the kernel may not read (EACCES, a link loop) is a ConfigError, not an absent file; a repeated key is a ConfigError naming it", async () => {
    const h = home();
    try {
      const file = join(h, "config.json");
      // A link loop: root meets it too.
      unlinkSync(file);
      symlinkSync("config.json", file);
      assert.throws(
        () => resolveConfig({ flags: { home: h }, env: {} }),
        (e: unknown) => e instanceof ConfigError && /config\.json exists but cannot be read \(ELOOP\)/.test((e as Error).message),
      );
      unlinkSync(file);
      assert.equal(resolveConfig({ flags: { home: h }, env: {} }).maxSessions, 1024, "no file: the defaults");
      // Unreadable by the kernel's user: as root, the kernel is run as nobody on a home of nobody's.
      writeFileSync(file, JSON.stringify({ sandbox: "none" }), { mode: 0o600 });
      chmodSync(file, 0o000);
      let said: string;
      if (process.getuid?.() === 0) {
        chownSync(h, 65534, 65534);
        chownSync(file, 65534, 65534);
        const config = new URL("../src/config.js", import.meta.url).href;
        const script = `import { resolveConfig } from ${JSON.stringify(config)};
          try { resolveConfig({ flags: { home: ${JSON.stringify(h)} }, env: {} }); console.log("read as absent"); }
          catch (e) { console.log(e.name + ": " + e.message); }`;
        const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
          uid: 65534,
          gid: 65534,
          encoding: "utf8",
        });
        said = r.stdout.trim() || r.stderr;
      } else {
        try {
          resolveConfig({ flags: { home: h }, env: {} });
          said = "read as absent";
        } catch (e) {
          said = `${(e as Error).name}: ${(e as Error).message}`;
        }
      }
      assert.match(said, /^ConfigError: config file .*config\.json exists but cannot be read \(EACCES\)/);
      // A repeated key: JSON.parse keeps the last, a reader of the file sees the first.
      rmSync(file, { force: true });
      writeFileSync(file, '{"sandbox": "bwrap", "maxSessions": 3, "sandbox": "none"}');
      assert.throws(
        () => resolveConfig({ flags: { home: h }, env: {} }),
        (e: unknown) => e instanceof ConfigError && /gives "sandbox" more than once/.test((e as Error).message),
      );
      // Spelt another way, it is the same key; the same key in two objects, or a key's value, is not repeated.
      writeFileSync(file, '{"sandbox": "bwrap", "\\u0073andbox": "none"}');
      assert.throws(() => resolveConfig({ flags: { home: h }, env: {} }), /gives "sandbox" more than once/);
      assert.equal(repeatedJsonKey('{"a": {"a": 1, "b": ["a", "a", {"a": 2}]}, "b": "b", "c": "a\\"b"}'), undefined);
      assert.equal(repeatedJsonKey('[{"x": 1}, {"x": 2, "y": {"z": 1, "z": 2}}]'), "z");
      assert.equal(repeatedJsonKey('{"a\\"": 1, "a\\u0022": 2}'), 'a"');
    } finally {
      removeHome(h);
    }
  });

  it("a bad setting stops the kernel constructor (the kernel never starts on it)", () => {
    const h = home();
    assert.throws(() => new Kernel({ home: h, logLevel: "silent", maxInFlight: -1 }), ConfigError);
    removeHome(h);
  });

  it("accepts the documented 0 (= no quota) for workspaceStorageBytes from every source", () => {
    const h = home();
    assert.equal(resolveConfig({ flags: { home: h, workspaceStorageBytes: "0" }, env: {} }).workspaceStorageBytes, 0);
    assert.equal(resolveConfig({ flags: { home: h }, env: { KPIP_WORKSPACE_STORAGE_BYTES: "0" } }).workspaceStorageBytes, 0);
    writeFileSync(join(h, "config.json"), JSON.stringify({ workspaceStorageBytes: 0 }));
    assert.equal(resolveConfig({ flags: { home: h }, env: {} }).workspaceStorageBytes, 0);
    removeHome(h);
  });
});

describe("one kernel per home, whatever socket it listens on", () => {
  it("refuses a second kernel on the same home with another socket; the first keeps serving", async () => {
    const t = await startKernel();
    const k2 = new Kernel({ home: t.home, socket: join(t.home, "other.sock"), logLevel: "silent" });
    await assert.rejects(k2.start(), (e: unknown) => e instanceof HomeInUseError);
    const k3 = new Kernel({ home: t.home, logLevel: "silent" });
    await assert.rejects(k3.start(), (e: unknown) => e instanceof HomeInUseError, "the home is checked before the socket");
    const c = await t.admin();
    assert.equal((await c.system.health()).status, "ok");
    await t.stop();
    assert.ok(!existsSync(join(t.home, "kernel.pid")), "stop releases the home");
    const again = await startKernel({}, t.home);
    await again.stop();
    removeHome(t.home);
  });

  it("refuses a home another process's kernel holds, naming it; takes it once that kernel is killed", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    const child = await childKernel(home);
    try {
      await assert.rejects(
        new Kernel({ home, socket: join(home, "b.sock"), logLevel: "silent" }).start(),
        (e: unknown) => e instanceof HomeInUseError && e.message.includes(`process ${child.pid}`),
      );
    } finally {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
    }
    // The lock went with the process; the stale kernel.pid it left is only a name.
    const t = await startKernel({}, home);
    const c = await t.admin();
    assert.equal((await c.system.health()).status, "ok");
    await t.stop();
    removeHome(home);
  });
});
