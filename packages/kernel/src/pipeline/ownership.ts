import { type OpContext, OpError, type PrimitiveDeclaration } from "../primitives/types.js";

/**
 * The pipeline's ownership stage, after the authorizer allowed the request and its arguments
 * checked, before the handler: PERMISSION when the request acts on what is not the caller's.
 * The capability says which ops on which targets; this says whose targets they are. Two rules:
 * the request's workspace must contain an `obj://` target (PROTOCOL §9.1, context checks), and
 * the op's own rule ({@link PrimitiveDeclaration.owns}). Handlers check no rights.
 */
export function checkOwnership(decl: PrimitiveDeclaration, ctx: OpContext): void {
  const { target, workspace } = ctx;
  if (target.scheme === "obj" && workspace !== undefined && workspace !== target.segments[0]) {
    throw new OpError("PERMISSION", `the request's workspace ${workspace} does not contain ${ctx.targetUri}`);
  }
  const owned = decl.owns?.(ctx) ?? true;
  if (owned !== true) throw new OpError("PERMISSION", owned);
}
