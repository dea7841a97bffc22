import { resolve } from "node:path";
import {
  AuditChainError,
  ConfigError,
  DamagedDatabaseError,
  flagName,
  HomeInUseError,
  Kernel,
  type KernelConfig,
  KeyFileError,
  SETTINGS,
  SocketPathError,
  UnsafeHomeError,
} from "@kpip/kernel";
import { printable } from "../audit/printable.js";
import type { Command, OptionSpec } from "../command.js";
import { EXIT } from "../util.js";

const options: Record<string, OptionSpec> = {
  config: {
    type: "string",
    description:
      "config file (default <home>/config.json); yours or root's, writable by no group or other, nor the directories above it",
  },
};
for (const s of SETTINGS) options[flagName(s.key)] = { type: "string", description: `${s.description} (env KPIP_…)` };

export const kernelCommand: Command = {
  name: "kernel",
  summary: "run a kernel in the foreground",
  usage: "kpip kernel [--home DIR] [--socket PATH] [settings…]",
  example: "kpip kernel --home ./.kpip --log-level debug",
  options,
  async run(values) {
    // A supervisor that stopped reading our stdout must not crash the kernel on shutdown.
    process.stdout.on("error", () => {});
    const flags: Partial<Record<keyof KernelConfig, unknown>> = {};
    for (const s of SETTINGS) {
      const v = values[flagName(s.key)];
      if (v !== undefined) flags[s.key] = v;
    }
    let kernel: Kernel;
    try {
      // The command reads KPIP_<NAME> from the environment; an embedded Kernel reads none.
      kernel = new Kernel({
        ...(flags as Partial<KernelConfig>),
        env: process.env,
        ...(values.config === undefined ? {} : { configFile: values.config as string }),
      });
      await kernel.start();
    } catch (e) {
      if (
        e instanceof ConfigError ||
        e instanceof SocketPathError ||
        e instanceof HomeInUseError ||
        e instanceof UnsafeHomeError ||
        e instanceof AuditChainError ||
        e instanceof DamagedDatabaseError ||
        e instanceof KeyFileError
      ) {
        // A message may quote what the home's config.json or a KPIP_* variable held (someone who
        // could write there chose it): JSON quoting leaves C1 controls and bidi overrides raw.
        process.stderr.write(`kpip kernel: ${printable(e.message)}\n`);
        return EXIT.USAGE;
      }
      throw e;
    }
    // Listening before the ready line: a supervisor that stops the kernel as soon as it reads the
    // line (a SIGTERM in the same instant) gets a clean stop, not Node's default death by the
    // signal — no kernel.stop record, the next start recovering as after a kill (case 715).
    const stopped = new Promise<void>((resolve) => {
      let stopping = false;
      const stop = (signal: NodeJS.Signals) => {
        if (stopping) return;
        stopping = true;
        process.stdout.write("stopping: draining sessions, flushing the audit log…\n");
        kernel.stop(signal).then(resolve, resolve);
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
    const fromRepo = process.env.npm_lifecycle_event === "start";
    const call = fromRepo ? "npm run kpip -- call system.health" : `kpip call system.health --home ${kernel.config.home}`;
    process.stdout.write(
      [
        `kpip kernel ${kernel.kernelId} is running`,
        `  socket:          ${kernel.socketPath}`,
        `  home:            ${kernel.config.home}`,
        `  admin identity:  ${kernel.adminIdentity}`,
        ...(kernel.metricsAddress ? [`  metrics:         http://${kernel.metricsAddress}/metrics`] : []),
        ...(kernel.config.auditAnchorFile ? [`  audit anchors:   ${resolve(kernel.config.auditAnchorFile)}`] : []),
        `try, in another shell:  ${call}`,
        "stop with Ctrl-C",
        "",
      ].join("\n"),
    );
    await stopped;
    const failed = kernel.storageFailure;
    if (failed) {
      process.stderr.write(
        `kernel stopped after its storage failed (${failed.message}): what was acknowledged is kept for the next start; restart once the disk is mended, then run kpip audit verify\n`,
      );
      // At once: a natural exit lets the SQLite addon close the database, whose close would checkpoint and drop the WAL.
      process.exit(EXIT.STORAGE_FAILED);
    }
    const full = kernel.storageFull;
    if (full) {
      process.stderr.write(
        `kernel stopped while its storage was full, its last records unwritten: ${printable(full)}. What was acknowledged is kept for the next start: free space, then start it again\n`,
      );
      // At once: nothing more can be written, and nothing of a stopped kernel should hold the process.
      process.exit(EXIT.STORAGE_FULL);
    }
    process.stdout.write("kernel stopped\n");
    return EXIT.OK;
  },
};
