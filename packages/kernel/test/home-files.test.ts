import assert from "node:assert/strict";
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadIdentity } from "@kpip/client";
import { tokenFromString } from "@kpip/protocol";
import { HOME_FILES, Kernel, UnsafeHomeError } from "../src/index.js";
import { klass, removeHome, startKernel } from "./harness.js";

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

  it("a home below a directory others may write (no sticky bit) or another user owns is refused: they could move it away and put theirs in its place while the kernel runs", async () => {
    const above = mkdtempSync(join(tmpdir(), "kpip-above-"));
    const safe = mkdtempSync(join(tmpdir(), "kpip-safe-"));
    try {
      chmodSync(above, 0o777);
      const home = join(above, "home");
      await assert.rejects(
        new Kernel({ home, logLevel: "silent" }).start(),
        (e) => e instanceof UnsafeHomeError && /writable by group or others \(mode 777\) without the sticky bit/.test(e.message),
      );
      assert.deepEqual(readdirSync(home), [], "nothing written in the home");
      // Named through a link that lies in such a directory, or one whose real path does.
      symlinkSync(safe, join(above, "link"));
      await assert.rejects(
        new Kernel({ home: join(above, "link", "home"), logLevel: "silent" }).start(),
        (e) => e instanceof UnsafeHomeError && e.message.includes(above),
      );
      mkdirSync(join(above, "real"), { mode: 0o700 });
      symlinkSync(join(above, "real"), join(safe, "into"));
      await assert.rejects(
        new Kernel({ home: join(safe, "into", "home"), logLevel: "silent" }).start(),
        (e) => e instanceof UnsafeHomeError && e.message.includes(above),
      );
      // Sticky, as /tmp: others cannot move what is not theirs.
      chmodSync(above, 0o1777);
      const t = await startKernel({}, home);
      await t.stop();
      if (process.getuid?.() === 0) {
        chmodSync(above, 0o755);
        chownSync(above, 65534, 65534);
        await assert.rejects(
          new Kernel({ home, logLevel: "silent" }).start(),
          (e) => e instanceof UnsafeHomeError && /belongs to uid 65534/.test(e.message),
        );
      }
    } finally {
      removeHome(above);
      removeHome(safe);
    }
  });

  it("a start that finds admin.token deleted mints a new root token and names, on the record and in the log, the earlier ones that still act until revoked", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-home-"));
    const rootId = () => tokenFromString(readFileSync(join(home, HOME_FILES.adminToken), "utf8").trim()).claims.id;
    const oldText = () => readFileSync(join(home, HOME_FILES.adminToken), "utf8").trim();
    try {
      let t = await startKernel({}, home);
      await t.stop();
      const first = rootId();
      const firstText = oldText();
      rmSync(join(home, HOME_FILES.adminToken));
      t = await startKernel({}, home);
      const second = rootId();
      assert.notEqual(second, first, "a new root token was minted");
      const renewals = t.k.inspect.queryAudit({ op: "kernel.admin-token", limit: 10 });
      assert.equal(renewals.length, 1);
      assert.deepEqual(JSON.parse(renewals[0]?.detail ?? "null"), { token: second, older: [first], olderCount: 1 });
      assert.match(renewals[0]?.message ?? "", /kpip token revoke/);
      // The earlier one still acts (revoking it would end what the admin minted from it) until revoked.
      const old = await t.connect(loadIdentity(join(home, HOME_FILES.adminIdentity)), [firstText]);
      await old.storage.write("obj://ws/old-root", "still valid");
      const admin = await t.admin();
      await admin.tokens.revoke(first);
      await assert.rejects(old.storage.write("obj://ws/old-root", "again"), klass("CAPABILITY"));
      await old.close().catch(() => {});
      await t.stop();
      // A plain restart with the file in place records nothing; a second renewal names no revoked token.
      rmSync(join(home, HOME_FILES.adminToken));
      t = await startKernel({}, home);
      const last = t.k.inspect.queryAudit({ op: "kernel.admin-token", limit: 10 });
      assert.equal(last.length, 2);
      assert.deepEqual(JSON.parse(last[1]?.detail ?? "null").older, [second]);
      await t.stop();
      t = await startKernel({}, home);
      assert.equal(t.k.inspect.queryAudit({ op: "kernel.admin-token", limit: 10 }).length, 2);
      await t.stop();
    } finally {
      removeHome(home);
    }
  });
});
