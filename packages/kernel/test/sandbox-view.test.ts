// What a sandbox sees of the paths it must not see when the operator's paths are not plain:
// a read path or home reached through a symbolic link or a bind mount, the gRPC TLS key and
// the config file under a read path. Checked from inside a real sandbox by listing what is
// there, so the checks hold whether the kernel runs as root (the sandbox's uid cannot enter
// the 0700 home: "Permission denied" when uncovered) or not (the home's names are listed).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { RootKeys } from "../src/auth/keys.js";
import { ConfigError, Kernel } from "../src/index.js";
import { removeHome, SANDBOX_READ_PATHS, sandboxSkip, startKernel, withKernel } from "./harness.js";

/** Runs `sh -c script` as a compute command; the script always exits 0 and says what happened. */
async function sh(c: KernelClient, script: string): Promise<string> {
  const d = await c.call("compute.submit", "op://command/sh", { args: ["-c", `${script}; exit 0`] });
  const r = (await c.ops.wait((d.payload as { op: string }).op)) as { stdout: Uint8Array; stderr: Uint8Array };
  return `${Buffer.from(r.stdout).toString()}${Buffer.from(r.stderr).toString()}`;
}

/** What `ls -a` prints for an empty directory: the cover the sandbox must see instead of a hidden one. */
const EMPTY = ".\n..\n";

/** A world-traversable temp directory (the sandbox's uid must reach a read path under it), removed by `f`'s end. */
async function inBase<T>(f: (base: string) => Promise<T>): Promise<T> {
  const base = mkdtempSync(join(tmpdir(), "kpip-view-"));
  chmodSync(base, 0o755);
  try {
    return await f(base);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

/** Bind-mounts `from` at `to` (root only); returns the unmount, which never throws (for finally blocks). */
function bindMount(from: string, to: string): () => void {
  const m = spawnSync("mount", ["--bind", from, to], { encoding: "utf8" });
  assert.equal(m.status, 0, `mount --bind ${from} ${to}: ${m.stderr}`);
  return () => {
    spawnSync("umount", ["-l", to]);
  };
}

const asRoot = { skip: process.getuid?.() === 0 ? false : "NOT RUN: needs root to make a bind mount" };

const reads = (...extra: string[]) => [SANDBOX_READ_PATHS, ...extra].join(":");
const tls = (f: string) => fileURLToPath(new URL(`../../test/fixtures/tls/${f}`, import.meta.url));

describe("what a sandbox sees through symbolic links and bind mounts", { skip: sandboxSkip }, () => {
  it("a read path that is a symbolic link to the home's parent shows an empty cover, not the home; re-linked after start, it still shows the directory checked at start", () =>
    inBase(async (base) => {
      // As a shell's logical $PWD (…/link) names a physical directory (…/real) that holds the home.
      mkdirSync(join(base, "real"), { mode: 0o755 });
      symlinkSync(join(base, "real"), join(base, "link"));
      // A symbolic link inside the read path that points into the home by its linked name.
      symlinkSync(join(base, "link", "home"), join(base, "real", "peek"));
      // And one by its real name, which no sandbox binds: nothing there.
      symlinkSync(join(base, "real", "home"), join(base, "real", "peek-real"));
      const home = join(base, "real", "home");
      await withKernel(
        { sandboxReadPaths: reads(join(base, "link")) },
        async (t) => {
          const c = await t.admin();
          assert.equal(await sh(c, `ls -a ${join(base, "link", "home")} 2>&1`), EMPTY);
          assert.equal(await sh(c, `ls -a ${join(base, "link", "peek")}/ 2>&1`), EMPTY);
          assert.match(await sh(c, `ls -a ${join(base, "link", "peek-real")}/ 2>&1`), /No such file/);
          assert.match(await sh(c, `cat ${join(base, "link", "home", "admin.token")} 2>&1`), /No such file/);
          // The read path's other content is there.
          assert.match(await sh(c, `ls ${join(base, "link")} 2>&1`), /home\npeek\npeek-real/);
          // Re-linked to a directory above the home: bound from the real path found at start, not followed.
          rmSync(join(base, "link"));
          symlinkSync(base, join(base, "link"));
          assert.equal(await sh(c, `ls ${join(base, "link")} 2>&1`), "home\npeek\npeek-real\n");
          assert.equal(await sh(c, `ls -a ${join(base, "link", "home")} 2>&1`), EMPTY);
        },
        home,
      );
    }));

  it("a home named through a symbolic link, with .. and a trailing slash, is covered where a read path shows it", () =>
    inBase(async (base) => {
      mkdirSync(join(base, "real"), { mode: 0o755 });
      symlinkSync(join(base, "real"), join(base, "link"));
      await withKernel(
        { sandboxReadPaths: reads(join(base, "real")) },
        async (t) => {
          const c = await t.admin();
          assert.equal(await sh(c, `ls -a ${join(base, "real", "home")} 2>&1`), EMPTY);
        },
        `${join(base, "link")}/sub/../home/`,
      );
    }));

  it(
    "a read path that is a bind mount of the home's parent shows an empty cover",
    {
      skip: process.getuid?.() === 0 ? false : "NOT RUN: needs root to make a bind mount",
    },
    () =>
      inBase(async (base) => {
        mkdirSync(join(base, "real"), { mode: 0o755 });
        mkdirSync(join(base, "alias"), { mode: 0o755 });
        const home = join(base, "real", "home");
        mkdirSync(home, { mode: 0o700 });
        const m = spawnSync("mount", ["--bind", join(base, "real"), join(base, "alias")], { encoding: "utf8" });
        assert.equal(m.status, 0, `mount --bind: ${m.stderr}`);
        try {
          await withKernel(
            { sandboxReadPaths: reads(join(base, "alias")) },
            async (t) => {
              const c = await t.admin();
              assert.equal(await sh(c, `ls -a ${join(base, "alias", "home")} 2>&1`), EMPTY);
            },
            home,
          );
        } finally {
          spawnSync("umount", [join(base, "alias")]);
        }
      }),
  );

  it("the gRPC TLS private key under a read path is hidden: its directory, or the key alone where its directory is bound", () =>
    inBase(async (base) => {
      const dir = join(base, "etc", "kpip");
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      chmodSync(join(base, "etc"), 0o755);
      for (const d of [dir, join(base, "etc")]) {
        copyFileSync(tls("server.pem"), join(d, "server.pem"));
        copyFileSync(tls("server.key"), join(d, "server.key"));
        chmodSync(join(d, "server.key"), 0o600);
      }
      const grpc = (d: string) => ({
        grpcListen: "127.0.0.1:0",
        grpcTlsCert: join(d, "server.pem"),
        grpcTlsKey: join(d, "server.key"),
      });
      // The key's directory lies under the read path: hidden whole.
      await withKernel({ sandboxReadPaths: reads(join(base, "etc")), ...grpc(dir) }, async (t) => {
        const c = await t.admin();
        assert.equal(await sh(c, `ls -a ${dir} 2>&1`), EMPTY);
        assert.doesNotMatch(await sh(c, `cat ${join(dir, "server.key")} 2>&1`), /PRIVATE KEY/);
      });
      // The key's directory is the read path: the key alone reads as an empty file; the certificate is public.
      const etc = join(base, "etc");
      await withKernel({ sandboxReadPaths: reads(etc), ...grpc(etc) }, async (t) => {
        const c = await t.admin();
        assert.match(await sh(c, `head -c 27 ${join(etc, "server.pem")} 2>&1`), /BEGIN CERTIFICATE/);
        assert.equal((await sh(c, `wc -c < ${join(etc, "server.key")} 2>&1`)).trim(), "0");
      });
    }));

  it("the config file's directory under a read path is hidden", () =>
    inBase(async (base) => {
      const dir = join(base, "conf");
      mkdirSync(dir, { mode: 0o755 });
      writeFileSync(join(dir, "kernel.json"), "{}\n", { mode: 0o644 });
      await withKernel({ sandboxReadPaths: reads(base), configFile: join(dir, "kernel.json") }, async (t) => {
        const c = await t.admin();
        assert.equal(await sh(c, `ls -a ${dir} 2>&1`), EMPTY);
        assert.match(await sh(c, `ls ${base} 2>&1`), /conf/);
      });
    }));
});

describe("read paths that would show a hidden path whole", () => {
  it("a read path that is the home through a symbolic link, lies inside it, or is / or /proc, is refused at start", () =>
    inBase(async (base) => {
      const home = join(base, "home");
      symlinkSync(home, join(base, "to-home"));
      for (const rp of [join(base, "to-home"), join(home, "objects"), join(base, "to-home", "objects")]) {
        const k = new Kernel({ home, logLevel: "silent", sandboxReadPaths: reads(rp) });
        await assert.rejects(k.start(), (e: Error) => {
          assert.ok(e instanceof ConfigError, `${rp}: ${e.name} ${e.message}`);
          assert.match(e.message, /sandbox read path .* shows the kernel home/);
          return true;
        });
      }
      symlinkSync("/", join(base, "to-root"));
      for (const rp of [join(base, "to-root"), "/proc/self/root", "/proc"]) {
        const k = new Kernel({ home, logLevel: "silent", sandboxReadPaths: reads(rp) });
        await assert.rejects(k.start(), (e: Error) => {
          assert.ok(e instanceof ConfigError, `${rp}: ${e.name} ${e.message}`);
          assert.match(e.message, /would show the host's \/proc/);
          return true;
        });
      }
    }));
});

describe("what a sandbox sees after start: mounts made since, bind mounts from the home, hard links", {
  skip: sandboxSkip,
}, () => {
  it("a bind mount of the home's parent made under a read path after the kernel started shows an empty cover", asRoot, () =>
    inBase(async (base) => {
      const real = join(base, "real");
      const data = join(base, "data");
      mkdirSync(real, { mode: 0o755 });
      mkdirSync(join(data, "alias"), { recursive: true, mode: 0o755 });
      chmodSync(data, 0o755);
      const home = join(real, "home");
      await withKernel(
        { sandboxReadPaths: reads(data) },
        async (t) => {
          const c = await t.admin();
          assert.equal(await sh(c, `ls -a ${join(data, "alias")} 2>&1`), EMPTY);
          const unmount = bindMount(real, join(data, "alias"));
          try {
            assert.equal(await sh(c, `ls -a ${join(data, "alias", "home")} 2>&1`), EMPTY);
            assert.match(await sh(c, `ls ${join(data, "alias")} 2>&1`), /^home$/m);
          } finally {
            unmount();
          }
          // Unmounted: the view is computed again, and launches go on.
          assert.equal(await sh(c, `ls -a ${join(data, "alias")} 2>&1`), EMPTY);
        },
        home,
      );
    }),
  );

  it(
    "a bind mount of a directory inside the home under a read path is covered whole, made before or after start; a read path that becomes one refuses launches",
    asRoot,
    () =>
      inBase(async (base) => {
        const home = join(base, "home");
        const inner = join(home, "inner");
        mkdirSync(inner, { recursive: true, mode: 0o755 });
        chmodSync(home, 0o700);
        writeFileSync(join(inner, "secret"), "s3cret\n", { mode: 0o644 });
        const data = join(base, "data");
        for (const d of ["x", "y"]) mkdirSync(join(data, d), { recursive: true, mode: 0o755 });
        chmodSync(data, 0o755);
        const unmounts = [bindMount(inner, join(data, "x"))];
        try {
          // A read path that is itself a bind mount of a directory inside the home is refused at start.
          const k = new Kernel({ home, logLevel: "silent", sandboxReadPaths: reads(join(data, "x")) });
          await assert.rejects(k.start(), (e: Error) => {
            assert.ok(e instanceof ConfigError, `${e.name} ${e.message}`);
            assert.match(e.message, /sandbox read path .* shows the kernel home/);
            return true;
          });
          await withKernel(
            { sandboxReadPaths: reads(data) },
            async (t) => {
              // The start made the home's entries 0700: open it again, as a careless operator might.
              chmodSync(inner, 0o755);
              const c = await t.admin();
              assert.equal(await sh(c, `ls -a ${join(data, "x")} 2>&1`), EMPTY);
              assert.doesNotMatch(await sh(c, `cat ${join(data, "x", "secret")} 2>&1`), /s3cret/);
              // Made after start: the home itself, and a directory inside it.
              unmounts.push(bindMount(home, join(data, "y")));
              assert.equal(await sh(c, `ls -a ${join(data, "y")} 2>&1`), EMPTY);
              mkdirSync(join(base, "other"), { mode: 0o755 });
              unmounts.push(bindMount(inner, join(base, "other")));
              // The read path itself now shows the home's inside: no cover can hide it without hiding the read path.
              unmounts.push(bindMount(join(base, "other"), data));
              // Refused; the persona is told no host path (the kernel's log names the home).
              await assert.rejects(sh(c, `cat ${join(data, "secret")}`), (e: Error) => {
                assert.match(e.message, /what the sandbox would show changed since the kernel started/);
                assert.ok(!e.message.includes(home), e.message);
                return true;
              });
              unmounts.pop()?.();
              assert.equal(await sh(c, `ls -a ${join(data, "x")} 2>&1`), EMPTY);
            },
            home,
          );
        } finally {
          for (const u of unmounts.reverse()) u();
        }
      }),
  );

  it("a hard link to a secret file refuses every launch while it is there, and the start", () =>
    inBase(async (base) => {
      const data = join(base, "data");
      const etc = join(base, "etc");
      const conf = join(base, "conf");
      for (const d of [data, etc, conf]) mkdirSync(d, { mode: 0o755 });
      copyFileSync(tls("server.pem"), join(etc, "server.pem"));
      copyFileSync(tls("server.key"), join(etc, "server.key"));
      chmodSync(join(etc, "server.key"), 0o600);
      writeFileSync(join(conf, "kernel.json"), "{}\n", { mode: 0o600 });
      const opts = {
        sandboxReadPaths: reads(data),
        configFile: join(conf, "kernel.json"),
        grpcListen: "127.0.0.1:0",
        grpcTlsCert: join(etc, "server.pem"),
        grpcTlsKey: join(etc, "server.key"),
      };
      const t = await startKernel(opts);
      try {
        const c = await t.admin();
        assert.equal(await sh(c, "echo ok"), "ok\n");
        const secrets: [string, string][] = [
          [join(t.home, "admin.token"), "admin token"],
          [join(t.home, "kernel.key"), "kernel key"],
          [join(t.home, "token-keys.json"), "token root key file"],
          [join(t.home, "kernel.db"), "kernel database"],
          [join(etc, "server.key"), "gRPC TLS key"],
          [join(conf, "kernel.json"), "config file"],
        ];
        for (const [file, what] of secrets) {
          linkSync(file, join(data, "copy"));
          try {
            await assert.rejects(sh(c, `cat ${join(data, "copy")}`), (e: Error) => {
              // Refused; the persona is told neither the file nor the home (the kernel's log is).
              assert.match(e.message, /what the sandbox would show changed since the kernel started/, `${what}: ${e.message}`);
              assert.ok(!e.message.includes(file) && !e.message.includes(t.home), `${what}: ${e.message}`);
              return true;
            });
          } finally {
            unlinkSync(join(data, "copy"));
          }
        }
        assert.equal(await sh(c, "echo ok"), "ok\n");
        linkSync(join(t.home, "kernel.key"), join(data, "copy"));
        await t.stop();
        // With the link still there, the kernel does not start on that home.
        const k = new Kernel({ home: t.home, logLevel: "silent", ...opts });
        await assert.rejects(k.start(), (e: Error) => {
          assert.ok(e instanceof ConfigError, `${e.name} ${e.message}`);
          assert.match(e.message, /the kernel key .* has 2 hard links/);
          return true;
        });
      } finally {
        await t.stop().catch(() => {});
        removeHome(t.home);
      }
    }));

  it("a secret file with another name is not replaced: the other name would keep the old keys with one link", () =>
    inBase(async (base) => {
      const home = join(base, "home");
      mkdirSync(home, { mode: 0o700 });
      RootKeys.load(home);
      const before = readFileSync(RootKeys.path(home), "utf8");
      linkSync(RootKeys.path(home), join(base, "copy"));
      assert.throws(() => RootKeys.rotate(home), /token-keys\.json has 2 hard links/);
      assert.equal(readFileSync(RootKeys.path(home), "utf8"), before);
      unlinkSync(join(base, "copy"));
      RootKeys.rotate(home);
      assert.notEqual(readFileSync(RootKeys.path(home), "utf8"), before);
    }));
});
