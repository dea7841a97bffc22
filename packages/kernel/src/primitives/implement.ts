import { type ArgsOf, type OpDefinition, withoutNulls } from "@kpip/protocol";
import type { OpContext, OpResult, PrimitiveDeclaration } from "./types.js";

/** What a declaration has beyond the wire's definition: the handler, and the kernel's own rules. */
export type Implementation<D extends OpDefinition> = Omit<Partial<PrimitiveDeclaration>, keyof OpDefinition | "handler"> & {
  handler: (ctx: OpContext<ArgsOf<D>>) => OpResult | Promise<OpResult>;
};

/**
 * Binds a handler to a built-in op's definition (`@kpip/protocol`'s catalogue): the declaration
 * the router holds is the definition itself, so the pipeline checks arguments against the same
 * fields the client's types and the docs come from, and the handler reads them typed.
 */
export function implement<D extends OpDefinition>(def: D, impl: Implementation<D>): PrimitiveDeclaration {
  const { handler, ...kernelOnly } = impl;
  // The pipeline has checked ctx.args against def.args (checkArgs) before any handler runs:
  // that check is what makes this the one place the wire's map is read as the op's type.
  const typed = handler as (ctx: OpContext) => OpResult | Promise<OpResult>;
  return {
    op: def.op,
    description: def.description,
    targets: [...def.targets],
    args: def.args,
    result: def.result,
    idempotent: def.idempotent,
    effects: def.effects,
    ...(def.authorizeAs === undefined ? {} : { authorizeAs: def.authorizeAs }),
    ...(def.reach === undefined ? {} : { reach: def.reach }),
    ...(def.sessionState === undefined ? {} : { sessionState: def.sessionState }),
    ...kernelOnly,
    handler: (ctx) => {
      // An argument sent as null is absent (PROTOCOL Appendix C): the handler sees it so.
      const args = withoutNulls(ctx.args);
      return typed(args === ctx.args ? ctx : { ...ctx, args });
    },
  };
}
