import { agentOps } from "./agent.js";
import { computeOps } from "./compute.js";
import type { OpDefinition } from "./define.js";
import { eventOps } from "./event.js";
import { personaOps } from "./persona.js";
import { resourceOps } from "./resource.js";
import { storageOps } from "./storage.js";
import { systemOps } from "./system.js";
import { tokenOps } from "./token.js";

export * from "./agent.js";
export { checkShape, hasFieldType, type ShapeCheck, type ShapeProblem, withoutNulls } from "./check.js";
export * from "./compute.js";
export * from "./define.js";
export * from "./event.js";
export * from "./persona.js";
export * from "./resource.js";
export * from "./storage.js";
export * from "./system.js";
export * from "./token.js";

/** Every built-in op by family, in the order the kernel registers them (and the docs list them). */
export const BUILTIN_FAMILIES: readonly { name: string; ops: readonly OpDefinition[] }[] = [
  { name: "system", ops: systemOps },
  { name: "storage", ops: storageOps },
  { name: "resource", ops: resourceOps },
  { name: "token", ops: tokenOps },
  { name: "compute", ops: computeOps },
  { name: "agent", ops: agentOps },
  { name: "persona", ops: personaOps },
  { name: "event", ops: eventOps },
];
