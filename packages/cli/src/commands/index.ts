import type { Command } from "../command.js";
import { agentsCommand, eventsCommand, opsCommand } from "./agents.js";
import { auditCommand } from "./audit.js";
import { benchCommand } from "./bench.js";
import { callCommand } from "./call.js";
import { kernelCommand } from "./kernel.js";
import { personaCommand } from "./persona.js";
import { statusCommand } from "./status.js";
import { tokenCommand } from "./token.js";

/** Every command, in the order `kpip --help` lists them (and docs/cli.md documents them). */
export const COMMANDS: Command[] = [
  kernelCommand,
  personaCommand,
  tokenCommand,
  callCommand,
  agentsCommand,
  opsCommand,
  eventsCommand,
  auditCommand,
  statusCommand,
  benchCommand,
];
