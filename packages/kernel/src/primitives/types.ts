import type { CborMap, CborValue, ErrorClass, FieldSpec, Grant, ParsedTarget, Shape, TargetScheme } from "@kpip/protocol";
import type { DetailValue } from "../audit/detail.js";
import type { HandleTable } from "../session/handles.js";

/** The shape of one argument a primitive accepts (a field of the op catalogue, `@kpip/protocol`). */
export type ArgSpec = FieldSpec;

/**
 * What a handler sees of the request; everything in it has been validated and authorized.
 * `A` is the arguments' type: a built-in op's, inferred from its definition (see implement.ts).
 */
export interface OpContext<A = CborMap> {
  op: string;
  persona: string;
  session: string;
  requestId: number;
  workspace: string | undefined;
  /** The target URI as sent, and parsed. */
  targetUri: string;
  target: ParsedTarget;
  args: A;
  /** Absolute Unix ms after which the work is abandoned, if the intent set one. */
  deadline: number | undefined;
  /** Fires when the session ends or the deadline passes. */
  signal: AbortSignal;
  /** The effective grant of the capability that authorized the request (limits live here). */
  grant: Grant | undefined;
  /** The session's handle table. */
  handles: HandleTable | undefined;
  /**
   * Runs the op's state change in one store transaction with the request's dedupe record of the
   * result it returns, so no crash can keep the effect and lose the record (PROTOCOL §11 rule 9).
   * An op whose effect is one store transaction makes it through this; a throw rolls back both.
   */
  atomically<T extends OpResult>(effect: () => T): T;
  /** The session's negotiated maximum body: an answer larger than this cannot be sent. */
  maxBody: number;
  /**
   * Declares that the op is about to hold `bytes` of answer in memory (a body it reads), until
   * the request is answered. Throws OpError RESOURCE when the session's or the kernel's budget of
   * answers in preparation is spent: call it before reading, not after. The pipeline holds
   * what the built answer takes beyond this anyway (pipeline/execute.ts holdResult); this only
   * spares reading what would then be refused.
   */
  holdAnswerBytes(bytes: number): void;
}

/** A successful outcome; failures are thrown as {@link OpError}. */
export interface OpResult {
  status: "SUCCESS" | "PARTIAL" | "DEFERRED";
  payload?: CborValue;
  /**
   * Small facts for the outcome record's detail (the ids and generations the op created, a
   * minted token): never payload bytes. The pipeline adds the status.
   */
  audit?: { [k: string]: DetailValue | undefined };
  /**
   * Token ids this effect newly revoked: the refusals they cause name its outcome record. Kept
   * with the answer committed with the effect (with `audit`), so an outcome record written by the
   * next start after a kill (audit/recover-outcomes.ts) carries the same and is named the same.
   */
  revoked?: readonly string[];
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
  /** The payload's fields, when declared (every built-in op's): `system.describe` sends them. */
  result?: Shape;
  /** Running it twice has the effect of running it once. */
  idempotent: boolean;
  /** It changes state: its intent record is committed before it runs. */
  effects: boolean;
  /**
   * The op a capability must grant for this one (default: the op itself): the steps of one act
   * are authorized as that act (the chunked upload's ops as `storage.write` on the same target).
   */
  authorizeAs?: string;
  /**
   * `subtree`: the op acts on its target and everything under it (a listing), and is authorized
   * on the pattern `<target>/**` (OpDefinition.reach): `system.describe` sends it.
   */
  reach?: "subtree";
  /** What the op leaves on the caller's session past its answer, when it does (OpDefinition.sessionState): `system.describe` sends it. */
  sessionState?: string;
  /**
   * A capability of this op also allows it on `target` when this says so, whatever its patterns:
   * a token over itself (token://<its id>). Asked by the capability enforcer, after a grant's
   * workspaces and domains allowed the request.
   */
  impliedBy?(grant: Grant, target: string): boolean;
  /**
   * The handler keeps no reference to its arguments' bytes once its promise settles, and every
   * read and write of them (a file write under way included) is done by then. The kernel may
   * then reuse a large request body's memory for the next one (session/body-pool.ts). Leave it
   * unset unless that holds on every path, failures included: a body still in use when its
   * memory is reused would carry another request's bytes.
   */
  releasesArgs?: boolean;
  /**
   * An op with effects whose handler makes every effect inside `ctx.atomically`, which asks the
   * registry again in the effect's transaction (pipeline/execute.ts): the registry is then not
   * also asked before the handler runs (the grant's revocation and expiry still are). A handler
   * that writes anything before that (a file-store body) must undo it when the commit is
   * refused. Small storage.writes asked it twice in one synchronous stretch.
   */
  effectsInAtomically?: boolean;
  /**
   * A look at or a stop of the caller's own work (op.status, op.cancel, op.list, agent.status,
   * agent.kill, agent.list): admitted past the grant's `concurrent` within a small allowance of
   * the requester's own (ResourceLedger.admit), so work that holds every slot (tasks,
   * commands, its agents' requests) can still be found and stopped. `rate` bounds it as any request.
   */
  control?: boolean;
  /**
   * The op's ownership rule, evaluated by the pipeline after authorization and the argument
   * check, before the handler (pipeline/ownership.ts): `true` when the caller may act on this
   * target, else why not (answered PERMISSION). Whose token, whose persona, a right beyond the
   * op's own: every rights check of an op lives here, never in its handler. May throw OpError
   * SEMANTIC for a target or argument it cannot judge.
   */
  owns?(ctx: OpContext): true | string;
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

/**
 * A failure that answers with a payload (PROTOCOL §9.2: a FAILURE's payload is optional, and
 * op-defined where an op's catalogue entry names it), e.g. op.result on a failed command: its
 * status and captured output. The handler holds the payload's bytes (holdAnswerBytes) before it
 * builds it, as for a SUCCESS.
 */
export class OpFailure extends OpError {
  override name = "OpFailure";
  constructor(
    errorClass: ErrorClass,
    message: string,
    readonly payload: CborValue,
  ) {
    super(errorClass, message);
  }
}
