#!/usr/bin/env node
import { FAST_COMMANDS } from "./commands/fast.js";
import { hoistGlobals } from "./globals.js";

// The installed `kpip` command. `npm run build` bundles this file into dist/bundle/kpip.cjs, so
// that the commands run many times a minute (`kpip call`, `status`, `ops` …) load one file
// instead of ~60 modules: module loading, not our code, was most of a call's time. Every other
// command (kernel, persona, token, audit, mcp, help) runs the unbundled CLI in dist/src, never
// mixed with the bundled copies in one process, so `instanceof` checks keep meaning one class.
async function main(): Promise<void> {
  const [name, ...rest] = hoistGlobals(process.argv.slice(2));
  const fast =
    name !== undefined && Object.hasOwn(FAST_COMMANDS, name) ? FAST_COMMANDS[name as keyof typeof FAST_COMMANDS] : undefined;
  if (fast) {
    const [{ runCommand }, { exitWith }] = await Promise.all([import("./command.js"), import("./exit.js")]);
    exitWith(fast.load().then((c) => runCommand(c, rest)));
  } else {
    // A computed specifier on purpose: the bundler leaves it alone. From dist/src and from
    // dist/bundle alike it names dist/src/main.js, which runs the command line it is given.
    await import(new URL("../src/main.js", import.meta.url).href);
  }
}

void main();
