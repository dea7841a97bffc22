import type { CapabilityRef, ErrorClass, Intent, RequestContext } from "@kpip/protocol";
import type { PrimitiveDeclaration } from "../primitives/types.js";

/** What the authorizer is asked about one request. */
export interface AuthorizationRequest {
  persona: string;
  session: string;
  intent: Intent;
  context: RequestContext;
  caps: CapabilityRef[];
  /** The op's declaration, or undefined when no primitive declares the op. */
  declaration: PrimitiveDeclaration | undefined;
}

export type Decision =
  | { allowed: true; capIds: string[] }
  | { allowed: false; errorClass: Extract<ErrorClass, "CAPABILITY" | "PERMISSION">; message: string; capIds: string[] };

/**
 * Resolves a request's capabilities and decides. The capability enforcer (tokens and
 * handles) implements this; until it lands, {@link AdminOnlyAuthorizer} does.
 */
export interface Authorizer {
  authorize(req: AuthorizationRequest): Decision;
}

/**
 * The interim rule: the admin persona may do everything, every other persona nothing.
 * There is still no ambient authority for others: they are refused with PERMISSION.
 */
export class AdminOnlyAuthorizer implements Authorizer {
  constructor(private readonly admin: string) {}

  authorize(req: AuthorizationRequest): Decision {
    if (req.persona === this.admin) return { allowed: true, capIds: ["admin"] };
    return {
      allowed: false,
      errorClass: "PERMISSION",
      message: `persona ${req.persona} holds no grant for ${req.intent.op} (only ${this.admin} may act until capabilities are configured)`,
      capIds: [],
    };
  }
}
