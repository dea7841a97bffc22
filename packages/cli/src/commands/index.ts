import type { Command } from "../command.js";

/** A command known by name; its module (and what it imports) loads only when it runs. */
export interface CommandEntry {
  readonly name: string;
  load(): Promise<Command>;
}

// Lazy on purpose: `kpip call` must not load the kernel (SQLite, grpc-js, pino) to send one intent.
/** Every command, in the order `kpip --help` lists them (and docs/cli.md documents them). */
export const COMMANDS: readonly CommandEntry[] = [
  { name: "kernel", load: async () => (await import("./kernel.js")).kernelCommand },
  { name: "persona", load: async () => (await import("./persona.js")).personaCommand },
  { name: "token", load: async () => (await import("./token.js")).tokenCommand },
  { name: "call", load: async () => (await import("./call.js")).callCommand },
  { name: "agents", load: async () => (await import("./agents.js")).agentsCommand },
  { name: "ops", load: async () => (await import("./agents.js")).opsCommand },
  { name: "events", load: async () => (await import("./agents.js")).eventsCommand },
  { name: "audit", load: async () => (await import("./audit.js")).auditCommand },
  { name: "mcp", load: async () => (await import("./mcp.js")).mcpCommand },
  { name: "status", load: async () => (await import("./status.js")).statusCommand },
  { name: "bench", load: async () => (await import("./bench.js")).benchCommand },
  { name: "completion", load: async () => (await import("./completion.js")).completionCommand },
];

/** Every command's definition (loads every module: for help and docs, not for running one). */
export const loadCommands = (): Promise<Command[]> => Promise.all(COMMANDS.map((c) => c.load()));
