import type { CommandEntry } from "../command.js";

// The commands a person or script runs many times a minute against a running kernel: they need
// only the client, so the bundled entry (dist/bundle/kpip.cjs) serves them from one file.
/** The commands the bundled entry runs itself; every other command goes to the unbundled CLI. */
export const FAST_COMMANDS = {
  call: { name: "call", load: async () => (await import("./call.js")).callCommand },
  agents: { name: "agents", load: async () => (await import("./agents.js")).agentsCommand },
  ops: { name: "ops", load: async () => (await import("./agents.js")).opsCommand },
  events: { name: "events", load: async () => (await import("./agents.js")).eventsCommand },
  status: { name: "status", load: async () => (await import("./status.js")).statusCommand },
} satisfies Record<string, CommandEntry>;
