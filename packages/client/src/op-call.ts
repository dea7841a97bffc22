import type { ArgsOf, CborMap, OpDefinition, ResultOf } from "@kpip/protocol";
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
  return async <D extends OpDefinition>(def: D, target: string, args: ArgsOf<D>, opts?: CallOptions) => {
    const r = await call(def.op, target, args as CborMap, opts);
    // The wire's one untyped step: the payload of this op is its definition's result.
    return r as OpAnswer<D>;
  };
}
