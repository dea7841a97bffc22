import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ConfigError, Kernel, resolveConfig, SocketPathError } from "../src/index.js";
import { removeHome, startKernel } from "./harness.js";

const refuses = async (opts: ConstructorParameters<typeof Kernel>[0], re: RegExp) => {
  const k = new Kernel({ logLevel: "silent", ...opts });
  await assert.rejects(k.start(), (e: unknown) => e instanceof SocketPathError && re.test((e as Error).message));
};

describe("the Unix socket and the kernel home", () => {
  it("creates the socket 0600 in a 0700 directory, and secrets 0600", async () => {
    const t = await startKernel();
    assert.equal(statSync(t.k.socketPath).mode & 0o777, 0o600);
    assert.equal(statSync(t.home).mode & 0o777, 0o700);
    for (const f of ["kernel.key", "admin.identity", "admin.token", "token-keys.json"]) {
      assert.equal(statSync(join(t.home, f)).mode & 0o777, 0o600, f);
    }
    await t.stop();
    removeHome(t.home);
  });

  it("refuses a socket path that is a symlink, a file, or in a directory others can write", async () => {
    const base = mkdtempSync(join(tmpdir(), "kpip-"));
    const dir = join(base, "d");
    mkdirSync(dir, { mode: 0o700 });
    symlinkSync(join(base, "elsewhere"), join(dir, "link.sock"));
    await refuses({ home: join(base, "h1"), socket: join(dir, "link.sock") }, /symlink/);
    writeFileSync(join(dir, "file.sock"), "x");
    await refuses({ home: join(base, "h2"), socket: join(dir, "file.sock") }, /not a socket/);
    const open = join(base, "open");
    mkdirSync(open);
    chmodSync(open, 0o777);
    await refuses({ home: join(base, "h3"), socket: join(open, "k.sock") }, /writable by group or others/);
    removeHome(base);
  });

  it("refuses to start where a kernel already answers, and replaces a stale socket", async () => {
    const t = await startKernel();
    await refuses({ home: mkdtempSync(join(tmpdir(), "kpip-")), socket: t.k.socketPath }, /already listening/);
    await t.stop();
    // a stale socket: a listener that died without removing its file
    const base = mkdtempSync(join(tmpdir(), "kpip-"));
    chmodSync(base, 0o700);
    const sock = join(base, "stale.sock");
    // a listener whose handle is closed without unlinking leaves its socket file behind
    const srv2 = net.createServer();
    await new Promise<void>((r) => srv2.listen(sock, r));
    (srv2 as unknown as { _handle: { close(): void } })._handle.close();
    const k = new Kernel({ home: join(base, "home"), socket: sock, logLevel: "silent" });
    await k.start();
    await k.stop();
    removeHome(t.home);
    removeHome(base);
  });

  it("resolves configuration: flags over env over config file over defaults", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    writeFileSync(join(home, "config.json"), JSON.stringify({ maxSessions: 7, maxInFlight: 9, heartbeatMs: 110 }));
    const c = resolveConfig({ flags: { home, maxSessions: "3" }, env: { KPIP_MAX_IN_FLIGHT: "5" } });
    assert.deepEqual([c.maxSessions, c.maxInFlight, c.heartbeatMs, c.socket], [3, 5, 110, join(home, "kernel.sock")]);
    writeFileSync(join(home, "config.json"), JSON.stringify({ maxSesions: 7 }));
    assert.throws(() => resolveConfig({ flags: { home }, env: {} }), ConfigError);
    writeFileSync(join(home, "config.json"), "{");
    assert.throws(() => resolveConfig({ flags: { home }, env: {} }), ConfigError);
    writeFileSync(join(home, "config.json"), "{}");
    assert.throws(() => resolveConfig({ flags: { home, maxSessions: "abc" }, env: {} }), ConfigError);
    assert.throws(() => resolveConfig({ flags: { home }, env: { KPIP_HEARTBEAT_MS: "-1" } }), ConfigError);
    removeHome(home);
  });
});
