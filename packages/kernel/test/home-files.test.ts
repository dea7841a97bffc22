import assert from "node:assert/strict";
import { chmodSync, chownSync, lstatSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { HOME_FILES, Kernel, UnsafeHomeError } from "../src/index.js";
import { removeHome, startKernel } from "./harness.js";

const mode = (p: string) => lstatSync(p).mode & 0o777;

/** Every regular file and directory directly in the home, with its mode (the socket is case 55's). */
function modes(home: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of readdirSync(home)) {
    const st = lstatSync(join(home, n));
    if (st.isFile() || st.isDirectory()) out[n] = (st.mode & 0o777).toString(8);
  }
  return out;
}

describe("the home: owner, modes, no links", () => {
  it("an existing 0755 home and a 0644 database become 0700 and 0600; every file the kernel writes is 0600", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-home-"));
    try {
      chmodSync(home, 0o755);
      let t = await startKernel({}, home);
      const admin = await t.admin();
      await admin.storage.write("obj://ws1/a", Buffer.from("x"));
      await t.stop();
      chmodSync(join(home, HOME_FILES.database), 0o644);
      chmodSync(home, 0o755);
      t = await startKernel({}, home);
      await (await t.admin()).storage.write("obj://ws1/b", Buffer.from("y"));
      assert.equal(mode(home), 0o700);
      const m = modes(home);
      for (const f of ["kernel.db", "kernel.db-wal", "kernel.db-shm", "kernel.lock", "kernel.pid", "kernel.key"]) {
        assert.equal(m[f], "600", `${f}: ${JSON.stringify(m)}`);
      }
      for (const [f, v] of Object.entries(m)) assert.ok(v === "600" || v === "700", `${f} is ${v}`);
      await t.stop();
    } finally {
      removeHome(home);
    }
  });

  it("a planted link in the home is refused before anything is written through it", async () => {
    for (const name of ["kernel.pid", "token-keys.json.tmp", "kernel.db"]) {
      const home = mkdtempSync(join(tmpdir(), "kpip-home-"));
      const victim = join(mkdtempSync(join(tmpdir(), "kpip-victim-")), "victim");
      try {
        writeFileSync(victim, "precious\n", { mode: 0o644 });
        symlinkSync(victim, join(home, name));
        const k = new Kernel({ home, logLevel: "silent" });
        await assert.rejects(k.start(), (e) => e instanceof UnsafeHomeError && /symbolic link/.test(e.message), name);
        assert.equal(readFileSync(victim, "utf8"), "precious\n", `${name}: the link's target was written`);
        assert.equal(mode(victim), 0o644);
        assert.deepEqual(readdirSync(home).sort(), [name], "nothing else was created");
      } finally {
        removeHome(home);
        removeHome(join(victim, ".."));
      }
    }
  });

  it("a home that is a link, or that belongs to another user, is refused", async () => {
    const real = mkdtempSync(join(tmpdir(), "kpip-home-"));
    const link = `${real}-link`;
    try {
      symlinkSync(real, link);
      await assert.rejects(new Kernel({ home: link, logLevel: "silent" }).start(), (e) => e instanceof UnsafeHomeError);
      assert.deepEqual(readdirSync(real), []);
      // Only root can give a directory away; CI runs as root.
      if (process.getuid?.() === 0) {
        chownSync(real, 65534, 65534);
        await assert.rejects(
          new Kernel({ home: real, logLevel: "silent" }).start(),
          (e) => e instanceof UnsafeHomeError && /uid 65534/.test(e.message),
        );
        assert.deepEqual(readdirSync(real), []);
      }
    } finally {
      removeHome(link);
      removeHome(real);
    }
  });
});
