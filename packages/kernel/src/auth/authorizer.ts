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
  | {
      allowed: false;
      errorClass: Extract<ErrorClass, "CAPABILITY" | "PERMISSION">;
      message: string;
      capIds: string[];
      /**
       * A PERMISSION refusal's first valid capability named, and its rate key: the refusal draws
       * on that family's `rate` as an allowed request would (its check cost as much).
       */
      grant?: Grant;
      rateKey?: string;
    };

/**
 * Resolves a request's capabilities and decides. The capability enforcer (tokens and handles, auth/enforcer.ts)
 * implements it; an embedder may supply another through `new Kernel({ authorizer })`.
 */
export interface Authorizer {
  /**
   * The decision on one request: at once, or as a promise (an embedder's remote policy, a cache
   * miss). A decision that comes later keeps the request's place: the session's later requests
   * wait until it has passed dedupe, so none overtakes it. A promise that rejects fails the
   * request (INTERNAL, logged). The kernel's own enforcer always decides at once.
   */
  authorize(req: AuthorizationRequest): Decision | Promise<Decision>;
  /**
   * Why the grant a decision carried no longer holds (revoked, itself or an ancestor, or past its
   * expiry), or undefined while it holds. Asked again right before an op's effect commits: an
   * effect an await separated from its decision (a large body written to the file store, an
   * upload's sync) must not land after a revocation answered in between. The kernel asks its own
   * token enforcer, whatever authorizer decided; this is asked only by a pipeline built without
   * one (the unit kit). `what`: what the grant authorized, for the message.
   */
  lapsed?(grant: Grant, what?: string): string | undefined;
}
