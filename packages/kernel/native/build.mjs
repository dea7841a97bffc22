// `npm install` of @kpip/kernel: builds the peer-credentials addon (native/peercred.c, see
// docs/architecture.md › Peer processes) with npm's own node-gyp, against Node's headers on this
// machine — never downloaded. A build that cannot happen or fails does not fail the install: the
// kernel runs without the addon and records every Unix-socket peer as unknown (said at its start).
import { spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const warn = (why) =>
  console.warn(`kpip: the peer-credentials addon was not built (${why}): the kernel will record Unix-socket peers as unknown`);

const args = ["rebuild", "--release"];
// Headers from npm's nodedir, else the ones beside this node (official builds install include/node
// under their prefix); without either node-gyp would download them, which the install must not do.
if (!process.env.npm_config_nodedir) {
  const prefix = dirname(dirname(process.execPath));
  if (!existsSync(join(prefix, "include", "node", "node_api.h"))) {
    warn(`no Node headers in ${join(prefix, "include", "node")}; set npm's nodedir to a directory that has them`);
    process.exit(0);
  }
  args.push(`--nodedir=${prefix}`);
}
// npm names its node-gyp for install scripts; run by hand, the one on PATH.
const gyp = process.env.npm_config_node_gyp;
const r = gyp
  ? spawnSync(process.execPath, [gyp, ...args], { cwd: pkg, stdio: "inherit" })
  : spawnSync("node-gyp", args, { cwd: pkg, stdio: "inherit", shell: process.platform === "win32" });
if (r.status !== 0) {
  // No half-built addon left to load.
  rmSync(join(pkg, "build"), { recursive: true, force: true });
  warn(r.error ? r.error.message : `node-gyp exited with ${r.status ?? r.signal}`);
}
