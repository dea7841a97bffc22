import type { CborMap, CborValue, ErrorClass, Grant, ParsedTarget, TargetScheme } from "@kpip/protocol";
import type { HandleTable } from "../auth/enforcer.js";

/** The shape of one argument a primitive accepts. */
export interface ArgSpec {
  type: "bytes" | "text" | "uint" | "bool" | "map" | "array" | "any";
  required?: boolean;
  description: string;
}

/** What a handler sees of the request; everything in it has been validated and authorized. */
export interface OpContext {
  op: string;
  persona: string;
  session: string;
  requestId: number;
  workspace: string | undefined;
  /** The target URI as sent, and parsed. */
  targetUri: string;
  target: ParsedTarget;
  args: CborMap;
  /** Absolute Unix ms after which the work is abandoned, if the intent set one. */
  deadline: number | undefined;
  /** Fires when the session ends or the deadline passes. */
  signal: AbortSignal;
  /** The effective grant of the capability that authorized the request (limits live here). */
  grant: Grant | undefined;
  /** The session's handle table. */
  handles: HandleTable | undefined;
}

/** A successful outcome; failures are thrown as {@link OpError}. */
export interface OpResult {
  status: "SUCCESS" | "PARTIAL" | "DEFERRED";
  payload?: CborValue;
}

/**
 * The declaration of one op. The router is a table of these; `system.describe` returns
 * them; embedders add their own through `kernel.register`. A handler never checks rights
 * or writes audit records: the pipeline does both before and after it runs.
 */
export interface PrimitiveDeclaration {
  op: string;
  description: string;
  /** Target schemes the op accepts. */
  targets: TargetScheme[];
  args: Record<string, ArgSpec>;
  /** Running it twice has the effect of running it once. */
  idempotent: boolean;
  /** It changes state: its intent record is committed before it runs. */
  effects: boolean;
  /**
   * The op a capability must grant for this one (default: the op itself): the steps of one act
   * are authorized as that act (the chunked upload's ops as `storage.write` on the same target).
   */
  authorizeAs?: string;
  handler(ctx: OpContext): OpResult | Promise<OpResult>;
}

export interface PrimitiveFamily {
  name: string;
  ops: PrimitiveDeclaration[];
}

/** A primitive's failure with its error class (KPIP §12). */
export class OpError extends Error {
  override name = "OpError";
  constructor(
    readonly errorClass: ErrorClass,
    message: string,
  ) {
    super(message);
  }
}
