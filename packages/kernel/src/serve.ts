/**
 * The kernel package's own process entry: runs one kernel in the foreground from
 * `--<setting> <value>` arguments (the names of `kpip kernel`'s flags; no environment, no
 * banner beyond one line). For processes that need a real kernel without the CLI, such as the
 * client package's tests: `node <kernel>/dist/src/serve.js --home DIR`. Prints
 * `kpip kernel <id> is running on <socket>` once it listens; SIGINT or SIGTERM stops it.
 */
import { flagName, type KernelConfig, SETTINGS } from "./config.js";
import { Kernel } from "./kernel.js";

function parseFlags(argv: string[]): Partial<Record<keyof KernelConfig, unknown>> {
  const flags: Partial<Record<keyof KernelConfig, unknown>> = {};
  for (let i = 0; i < argv.length; i += 2) {
    const spec = SETTINGS.find((s) => `--${flagName(s.key)}` === argv[i]);
    if (!spec || argv[i + 1] === undefined) throw new Error(`unknown flag or missing value: ${argv[i]}`);
    flags[spec.key] = argv[i + 1];
  }
  return flags;
}

const kernel = new Kernel(parseFlags(process.argv.slice(2)) as Partial<KernelConfig>);
await kernel.start();
const stop = (signal: NodeJS.Signals) => {
  kernel.stop(signal).then(
    // process.exit, not a natural exit: after a storage failure SQLite's close must not run (kernel.storageFailure).
    () => process.exit(kernel.storageFailure ? 4 : 0),
    () => process.exit(1),
  );
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
// Listening before the ready line: a SIGTERM sent as it is read is a clean stop (case 715).
process.stdout.write(`kpip kernel ${kernel.kernelId} is running on ${kernel.socketPath}\n`);
