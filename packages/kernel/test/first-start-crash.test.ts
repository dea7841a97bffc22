import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { tokenFromString } from "@kpip/protocol";
import { HOME_FILES, SqliteStore } from "../src/index.js";
import { removeHome, startKernel } from "./harness.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/**
 * A kernel's first start on `home`, in a child process that SIGKILLs itself at a chosen point:
 * `register` as the admin persona is about to be registered (its identity file written),
 * `write:<file>` at the first write into that home file (created, nothing in it yet), `minted`
 * once the admin's root token is recorded, or `named` as its file is about to get its name.
 */
async function firstStartKilledAt(home: string, point: string): Promise<void> {
  const code = `import { createRequire, syncBuiltinESMExports } from "node:module";
const require = createRequire(import.meta.url);
const fs = require("node:fs");
const [mod, home, point] = process.argv.slice(1);
const die = () => process.kill(process.pid, "SIGKILL");
if (point.startsWith("write:")) {
  const name = point.slice(6);
  const watched = new Set();
  const open = fs.openSync, write = fs.writeSync;
  fs.openSync = function (p, ...rest) {
    const fd = open.call(this, p, ...rest);
    if (typeof p === "string" && p.startsWith(home) && p.slice(home.length + 1).startsWith(name)) watched.add(fd);
    return fd;
  };
  fs.writeSync = function (fd, ...rest) {
    if (watched.has(fd)) die();
    return write.call(this, fd, ...rest);
  };
  syncBuiltinESMExports();
}
const { Kernel, SqliteStore } = await import(mod);
if (point === "register") {
  const add = SqliteStore.prototype.addPersona;
  SqliteStore.prototype.addPersona = function (...args) {
    die();
    return add.apply(this, args);
  };
}
if (point === "minted") {
  const record = SqliteStore.prototype.recordToken;
  SqliteStore.prototype.recordToken = function (r) {
    record.call(this, r);
    if (r.mintedBy === "kernel") die();
  };
}
if (point === "named") {
  const link = fs.linkSync;
  fs.linkSync = function (from, to) {
    if (to === home + "/admin.token") die();
    return link.call(this, from, to);
  };
  syncBuiltinESMExports();
}
await new Kernel({ home, logLevel: "silent" }).start();
process.stdout.write("started\\n");
process.exit(0);`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", code, kernelModule, home, point], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (d) => {
    out += d;
  });
  const [, signal] = (await new Promise((r) => child.once("exit", (...a) => r(a)))) as [number | null, string | null];
  assert.equal(signal, "SIGKILL", `the first start was to die at ${point} (it said: ${out.trim() || "nothing"})`);
}

/** The next start on the killed home: it starts, and its admin (identity and token files) connects and acts. */
async function nextStartServes(home: string): Promise<void> {
  const t = await startKernel({}, home);
  try {
    const c = await t.admin();
    await c.storage.write("obj://ws/after", "the home works");
    assert.equal((await c.system.info()).kernel !== undefined, true);
    await c.close();
  } finally {
    await t.stop();
  }
  // No half-written file is left under a home file's name, nor a temp file beside it.
  for (const f of readdirSync(home)) {
    if (statSync(join(home, f)).isFile()) assert.ok(!/\.(tmp|new)$/.test(f), `${f} was left in the home`);
  }
  for (const f of ["kernel.key", "admin.identity", "admin.token"]) assert.ok(readFileSync(join(home, f)).length > 0, f);
}

describe("a kernel killed during its first start", () => {
  it("killed after writing the admin's identity and before registering it: the next start finishes the first start", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      await firstStartKilledAt(home, "register");
      await nextStartServes(home);
    } finally {
      removeHome(home);
    }
  });

  it("killed as it writes kernel.key, admin.identity or admin.token: no partial file under its name; the next start serves", async () => {
    for (const file of ["kernel.key", "admin.identity", "admin.token"]) {
      const home = mkdtempSync(join(tmpdir(), "kpip-"));
      try {
        await firstStartKilledAt(home, `write:${file}`);
        assert.ok(!existsSync(join(home, file)) || statSync(join(home, file)).size > 0, `${file} is empty after the kill`);
        await nextStartServes(home);
      } finally {
        removeHome(home);
      }
    }
  });

  it("killed between minting the admin's token and naming its file: the next start keeps one admin token, the one in the file", async () => {
    for (const point of ["minted", "write:admin.token", "named"]) {
      const home = mkdtempSync(join(tmpdir(), "kpip-"));
      try {
        await firstStartKilledAt(home, point);
        await nextStartServes(home);
        const store = new SqliteStore(join(home, HOME_FILES.database));
        try {
          const minted = store.listTokens("admin").filter((t) => t.mintedBy === "kernel");
          const inFile = tokenFromString(readFileSync(join(home, HOME_FILES.adminToken), "utf8").trim()).claims.id;
          assert.deepEqual(
            minted.map((t) => t.id),
            [inFile],
            `killed at ${point}: one root token row, the file's (no unused 10-year token left)`,
          );
        } finally {
          store.close();
        }
      } finally {
        removeHome(home);
      }
    }
  });
});
