import type { CapabilityRef, ErrorClass, Grant, Intent, RequestContext } from "@kpip/protocol";
import type { PrimitiveDeclaration } from "../primitives/types.js";
import type { HandleTable } from "../session/handles.js";

/** What the authorizer is asked about one request. */
export interface AuthorizationRequest {
  persona: string;
  session: string;
  intent: Intent;
  context: RequestContext;
  caps: CapabilityRef[];
  /** The session's bound handles. */
  handles?: HandleTable;
  /** The op's declaration, or undefined when no primitive declares the op. */
  declaration: PrimitiveDeclaration | undefined;
}

export type Decision =
  | {
      allowed: true;
      capIds: string[];
      grant?: Grant;
      /** Key of the grant's rate bucket (its token family; default the grant's id). */
      rateKey?: string;
    }
  | { allowed: false; errorClass: Extract<ErrorClass, "CAPABILITY" | "PERMISSION">; message: string; capIds: string[] };

/**
 * Resolves a request's capabilities and decides. The capability enforcer (tokens and handles, auth/enforcer.ts)
 * implements it; an embedder may supply another through `new Kernel({ authorizer })`.
 */
export interface Authorizer {
  authorize(req: AuthorizationRequest): Decision;
}
