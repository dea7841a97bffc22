// `npm install` of @kpip/kernel: builds the peer-credentials addon (native/peercred.c, see
// docs/architecture.md › Peer processes) with npm's own node-gyp, against Node's headers on this
// machine — never downloaded. A build that cannot happen or fails does not fail the install: the
// kernel runs without the addon and records every Unix-socket peer as unknown (said at its start).
import { spawnSync } from "node:child_process";
import { existsSync, realpathSync, rmSync } from "node:fs";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The file a path (a symlink, as npm on PATH is) names, or the path itself. */
const realpathOr = (p) => {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
};

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
// npm names its node-gyp for install scripts; run by hand, the one on PATH, else npm's bundled
// copy (next to the npm running this, or the npm installed beside this node) — never a download.
const onPath = (name) =>
  (process.env.PATH ?? "")
    .split(delimiter)
    .some((d) => d !== "" && existsSync(join(d, process.platform === "win32" ? `${name}.cmd` : name)));
const bundled = () => {
  const npmDirs = [];
  // npm_execpath: npm's bin/npm-cli.js when an npm script runs this.
  if (process.env.npm_execpath) npmDirs.push(dirname(dirname(realpathOr(process.env.npm_execpath))));
  const prefix = dirname(dirname(process.execPath));
  npmDirs.push(join(prefix, "lib", "node_modules", "npm"), join(prefix, "node_modules", "npm"));
  for (const d of (process.env.PATH ?? "").split(delimiter)) {
    const npm = join(d, "npm");
    if (d !== "" && existsSync(npm)) npmDirs.push(dirname(dirname(realpathOr(npm))));
  }
  for (const d of npmDirs) {
    const gyp = join(d, "node_modules", "node-gyp", "bin", "node-gyp.js");
    if (existsSync(gyp)) return gyp;
  }
  return undefined;
};
const gyp = process.env.npm_config_node_gyp || (onPath("node-gyp") ? undefined : bundled());
const r = gyp
  ? spawnSync(process.execPath, [gyp, ...args], { cwd: pkg, stdio: "inherit" })
  : spawnSync("node-gyp", args, { cwd: pkg, stdio: "inherit", shell: process.platform === "win32" });
if (r.status !== 0) {
  // No half-built addon left to load.
  rmSync(join(pkg, "build"), { recursive: true, force: true });
  warn(r.error ? r.error.message : `node-gyp exited with ${r.status ?? r.signal}`);
}
