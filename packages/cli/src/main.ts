#!/usr/bin/env node
import { runCommand } from "./command.js";
import { COMMANDS } from "./commands/index.js";
import { EXIT } from "./util.js";

function usage(): string {
  return [
    "kpip — the Kernel–Persona IPC Protocol kernel and its tools",
    "",
    "usage: kpip <command> [options]",
    "",
    ...COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`),
    "",
    "run `kpip <command> --help` for a command's options and an example",
    "exit codes: 0 ok, 1 failure answered by the kernel or a failed check, 2 usage error, 3 kernel unavailable",
    "",
  ].join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage());
    return name === undefined ? EXIT.USAGE : EXIT.OK;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    process.stderr.write(`kpip: unknown command ${JSON.stringify(name)}\n\n${usage()}`);
    return EXIT.USAGE;
  }
  return runCommand(cmd, rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`kpip: internal error: ${(e as Error).stack ?? e}\n`);
    process.exitCode = EXIT.FAILED;
  },
);
