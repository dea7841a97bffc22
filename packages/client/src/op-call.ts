import type { ArgsOf, CborMap, Intent, OpDefinition, Response, ResultOf, Status } from "@kpip/protocol";
import type { CallFn, CallOptions, CallResult } from "./options.js";

/** A non-failure answer to a catalogue op, its payload typed by the op's definition. */
export interface OpAnswer<D extends OpDefinition> {
  status: CallResult["status"];
  payload: ResultOf<D>;
}

/** A call typed by an op's definition in `@kpip/protocol`'s catalogue: `op(storageRead, target, args)`. */
export type OpCall = <D extends OpDefinition>(
  def: D,
  target: string,
  args: ArgsOf<D>,
  opts?: CallOptions,
) => Promise<OpAnswer<D>>;

/**
 * Types `call` by the op catalogue: the arguments are checked against the definition when this
 * compiles, and the payload is what the definition declares (spec Appendix C; the kernel's
 * op-catalogue test holds every built-in op's answers to it). Fields left undefined are not sent.
 */
export function opCall(call: CallFn): OpCall {
  // No promise of its own: the call's. The wire's one untyped step: the payload of this op is its definition's result.
  return <D extends OpDefinition>(def: D, target: string, args: ArgsOf<D>, opts?: CallOptions) =>
    call(def.op, target, args as CborMap, opts) as Promise<OpAnswer<D>>;
}

/**
 * An answer to a catalogue op with FAILURE as a value (as `request` gives it): SUCCESS and
 * PARTIAL carry the definition's payload; DEFERRED carries the op's handle, FAILURE none.
 */
export type OpResponse<D extends OpDefinition> =
  | (Omit<Response, "status" | "payload"> & { status: "SUCCESS" | "PARTIAL"; payload: ResultOf<D> })
  | (Omit<Response, "status"> & { status: Exclude<Status, "SUCCESS" | "PARTIAL"> });

/** A request typed by an op's definition, FAILURE answered as a value: `opRequest(storageList, target, args)`. */
export type OpRequest = <D extends OpDefinition>(
  def: D,
  target: string,
  args: ArgsOf<D>,
  opts?: CallOptions,
) => Promise<OpResponse<D>>;

/** Types `request` by the op catalogue, as {@link opCall} types `call`. */
export function opRequest(request: (intent: Intent, opts?: CallOptions) => Promise<Response>): OpRequest {
  return <D extends OpDefinition>(def: D, target: string, args: ArgsOf<D>, opts?: CallOptions) =>
    // The wire's one untyped step, as in opCall.
    request({ op: def.op, args: args as CborMap, target }, opts) as Promise<OpResponse<D>>;
}
