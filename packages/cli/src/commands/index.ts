import type { Command, CommandEntry } from "../command.js";
import { FAST_COMMANDS as F } from "./fast.js";

export type { CommandEntry } from "../command.js";

// Lazy on purpose: `kpip call` must not load the kernel (SQLite, grpc-js, pino) to send one intent.
/** Every command, in the order `kpip --help` lists them (and docs/cli.md documents them). */
export const COMMANDS: readonly CommandEntry[] = [
  { name: "kernel", load: async () => (await import("./kernel.js")).kernelCommand },
  { name: "persona", load: async () => (await import("./persona.js")).personaCommand },
  { name: "token", load: async () => (await import("./token.js")).tokenCommand },
  F.call,
  F.agents,
  F.ops,
  F.events,
  { name: "audit", load: async () => (await import("./audit.js")).auditCommand },
  { name: "mcp", load: async () => (await import("./mcp.js")).mcpCommand },
  F.status,
  { name: "bench", load: async () => (await import("./bench.js")).benchCommand },
  { name: "completion", load: async () => (await import("./completion.js")).completionCommand(loadCommands) },
];

/** Every command's definition (loads every module: for help and docs, not for running one). */
export const loadCommands = (): Promise<Command[]> => Promise.all(COMMANDS.map((c) => c.load()));
