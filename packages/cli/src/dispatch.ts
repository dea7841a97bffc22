import { readFileSync } from "node:fs";
import { hoistGlobals, runCommand } from "./command.js";
import { COMMANDS, loadCommands } from "./commands/index.js";
import { didYouMean } from "./suggest.js";
import { EXIT } from "./util.js";

async function usage(): Promise<string> {
  const commands = await loadCommands();
  return [
    "kpip — the Kernel–Persona IPC Protocol kernel and its tools",
    "",
    "usage: kpip [--home H] <command> [options]",
    "",
    ...commands.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`),
    "",
    "run `kpip <command> --help` for a command's options and an example; `kpip --version` for the version",
    "exit codes: 0 ok, 1 failure answered by the kernel or a failed check, 2 usage error, 3 kernel unavailable",
    "",
  ].join("\n");
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
  return `kpip ${pkg.version} (node ${process.version})\n`;
}

/**
 * The command line, to its exit code: the command's module loads only when it runs. `main.ts`
 * runs it as the process; tests that run many command lines run it in a worker thread.
 */
export async function dispatch(argv: string[]): Promise<number> {
  const [name, ...rest] = hoistGlobals(argv);
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(await usage());
    return name === undefined ? EXIT.USAGE : EXIT.OK;
  }
  if (name === "--version" || name === "-V" || name === "version") {
    process.stdout.write(version());
    return EXIT.OK;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (!entry) {
    const names = COMMANDS.map((c) => c.name);
    process.stderr.write(
      `kpip: unknown command ${JSON.stringify(name)}${didYouMean(name, names)}\nrun \`kpip --help\` for the list of commands\n`,
    );
    return EXIT.USAGE;
  }
  return runCommand(await entry.load(), rest);
}
