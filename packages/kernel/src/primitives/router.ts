import type { CborMap, CborValue } from "@kpip/protocol";
import { OpError, type PrimitiveDeclaration, type PrimitiveFamily } from "./types.js";

/** The op table, built from primitive declarations. */
export class Router {
  private readonly table = new Map<string, PrimitiveDeclaration>();
  private readonly families: string[] = [];

  register(family: PrimitiveFamily): void {
    for (const d of family.ops) {
      if (this.table.has(d.op)) throw new Error(`op ${d.op} is already registered`);
    }
    for (const d of family.ops) this.table.set(d.op, d);
    this.families.push(family.name);
  }

  get(op: string): PrimitiveDeclaration | undefined {
    return this.table.get(op);
  }

  all(): PrimitiveDeclaration[] {
    return [...this.table.values()].sort((a, b) => (a.op < b.op ? -1 : 1));
  }

  /** The table as `system.describe` returns it. */
  describe(): CborValue {
    return {
      families: [...this.families],
      ops: this.all().map((d) => ({
        op: d.op,
        description: d.description,
        targets: d.targets,
        idempotent: d.idempotent,
        effects: d.effects,
        args: Object.fromEntries(
          Object.entries(d.args).map(([k, a]) => [
            k,
            { type: a.type, required: a.required ?? false, description: a.description },
          ]),
        ),
      })),
    };
  }
}

/** Checks args against the declaration; unknown or ill-typed args are SEMANTIC. */
export function checkArgs(d: PrimitiveDeclaration, args: CborMap): void {
  for (const k of Object.keys(args)) {
    // Own properties only: `constructor` or `toString` is no argument of any op.
    if (!Object.hasOwn(d.args, k)) throw new OpError("SEMANTIC", `${d.op} takes no argument ${JSON.stringify(k)}`);
  }
  for (const [k, spec] of Object.entries(d.args)) {
    const v = args[k];
    if (v === undefined || v === null) {
      if (spec.required) throw new OpError("SEMANTIC", `${d.op} needs argument ${JSON.stringify(k)} (${spec.description})`);
      continue;
    }
    if (!matches(spec.type, v)) throw new OpError("SEMANTIC", `argument ${JSON.stringify(k)} of ${d.op} must be ${spec.type}`);
  }
}

function matches(type: string, v: CborValue): boolean {
  switch (type) {
    case "bytes":
      return v instanceof Uint8Array;
    case "text":
      return typeof v === "string";
    case "uint":
      return typeof v === "number" && v >= 0;
    case "bool":
      return typeof v === "boolean";
    case "array":
      return Array.isArray(v);
    case "map":
      return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
    default:
      return true;
  }
}
