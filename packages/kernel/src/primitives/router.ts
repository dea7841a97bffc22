import { type CborMap, type CborValue, checkShape, type FieldSpec, type Shape, type ShapeCheck } from "@kpip/protocol";
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
        args: describeShape(d.args),
        ...(d.result ? { result: describeShape(d.result) } : {}),
        ...(d.authorizeAs ? { authorizeAs: d.authorizeAs } : {}),
        ...(d.reach ? { reach: d.reach } : {}),
        ...(d.sessionState ? { sessionState: d.sessionState } : {}),
      })),
    };
  }
}

/**
 * Checks args against the declaration's fields (`checkShape`, the op catalogue's own check);
 * unknown, missing or ill-typed args are SEMANTIC.
 */
/** How every request's arguments are checked (one object, not one per request). */
const ARGS: ShapeCheck = Object.freeze({ mode: "args" });

export function checkArgs(d: PrimitiveDeclaration, args: CborMap): void {
  const p = checkShape(d.args, args, ARGS);
  if (!p) return;
  const name = JSON.stringify(p.path);
  if (p.kind === "unknown") throw new OpError("SEMANTIC", `${d.op} takes no argument ${name}`);
  if (p.kind === "missing") throw new OpError("SEMANTIC", `${d.op} needs argument ${name} (${p.spec.description})`);
  throw new OpError("SEMANTIC", `argument ${name} of ${d.op} must be ${typeName(p.spec)}`);
}

function typeName(f: FieldSpec): string {
  return f.items ? `${f.type} of ${typeName(f.items)}` : f.values ? `${f.type} of ${typeName(f.values)}` : f.type;
}

/** A field as `system.describe` sends it: `required` always present, nested fields alike. */
function describeField(f: FieldSpec): CborMap {
  const out: CborMap = { type: f.type, required: f.required ?? false, description: f.description };
  if (f.nullable) out.nullable = true;
  if (f.items) out.items = describeField(f.items);
  if (f.values) out.values = describeField(f.values);
  if (f.fields) out.fields = describeShape(f.fields);
  return out;
}

const describeShape = (s: Shape): CborMap => Object.fromEntries(Object.entries(s).map(([k, f]) => [k, describeField(f)]));
