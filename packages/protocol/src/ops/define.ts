import type { CborMap, CborValue } from "../cbor/value.js";
import type { TargetScheme } from "../intent/grammar.js";

/*
 * The op catalogue's vocabulary: an op's arguments and its payload are maps of named fields,
 * each a small spec that is data (the kernel checks arguments with it, the docs and the spec's
 * appendix are rendered from it, `system.describe` sends it) and a type (TypeScript infers the
 * arguments a handler reads and the payload a client gets from the same literal).
 */

/** A field's CBOR type: `uint` is an unsigned integer, `map` a text-keyed map, `any` any value. */
export type FieldType = "bytes" | "text" | "uint" | "bool" | "map" | "array" | "any";

/** One argument or payload field. */
export interface FieldSpec {
  type: FieldType;
  /** Absent (or null, for an argument) unless this is set. */
  required?: boolean;
  /** The value may be null (a payload field that is present but empty). */
  nullable?: boolean;
  description: string;
  /** `array`: the type of every element. */
  items?: FieldSpec;
  /** `map`: the fields it has (a record). */
  fields?: Shape;
  /** `map`: the type of every value (a dictionary keyed by name). */
  values?: FieldSpec;
}

/** A map described field by field: an op's arguments, or its payload. */
export type Shape = { readonly [name: string]: FieldSpec };

/** What one op looks like on the wire. The kernel binds a handler to it; a client calls it. */
export interface OpDefinition<A extends Shape = Shape, R extends Shape = Shape> {
  readonly op: string;
  readonly description: string;
  /** Target schemes the op accepts. */
  readonly targets: readonly TargetScheme[];
  readonly args: A;
  /** The payload of its SUCCESS (and, where the op says so, PARTIAL or DEFERRED) answer. */
  readonly result: R;
  /** Statuses other than SUCCESS the op answers with, and what their payload is. */
  readonly answers?: { readonly PARTIAL?: string; readonly DEFERRED?: string; readonly FAILURE?: string };
  /** Running it twice has the effect of running it once. */
  readonly idempotent: boolean;
  /** It changes state: its intent record is committed before it runs. */
  readonly effects: boolean;
  /** The op a capability must grant for this one (default: the op itself). */
  readonly authorizeAs?: string;
  /**
   * What of its target the op acts on, when more than the target itself: `subtree`, the target
   * and everything under it (a listing answers every object or persona below its target). Such
   * an op is authorized on the pattern {@link authorizationTarget} makes of its target
   * (`obj://ws/a` → `obj://ws/a/**`), which one grant pattern must cover (the subset test of
   * PROTOCOL §13.1, as for a watch's pattern): a grant that reaches only part of the subtree
   * does not allow the op on its top.
   */
  readonly reach?: "subtree";
  /**
   * What the op leaves on (or takes from) the caller's session past its answer — a
   * subscription and its slot, a watch, a bound token — said in a few words. Such an op acts
   * for the session, not for one request: a gateway that carries several hosts over one
   * session (`kpip mcp`) never offers it to them, since what one host leaves there would act
   * for every other host (a bound token's authority), take from them (the session's
   * subscription slots), or outlive its own session (EVENTs no host reads). Every op whose
   * handler holds session state must say so here: the gateway builds its tools from this.
   */
  readonly sessionState?: string;
}

/**
 * The target a grant must allow for `op` on `target`: the target itself, or for an op that
 * reaches the subtree under it (`reach: "subtree"`) the pattern of that subtree —
 * `obj://ws/a` → `obj://ws/a/**`, a bare `obj://ws` → `obj://ws/**`. The kernel's enforcer,
 * its refusal's message and a client's pre-check all ask this, so they agree.
 */
export function authorizationTarget(op: { readonly reach?: "subtree" | undefined } | undefined, target: string): string {
  if (op?.reach !== "subtree") return target;
  return target.endsWith("/") ? `${target}**` : `${target}/**`;
}

/**
 * Declares an op. The literal's types are kept (`const`), so {@link ArgsOf} and {@link ResultOf}
 * read the argument and payload types off the same object the kernel checks against.
 */
export function defineOp<const A extends Shape, const R extends Shape>(d: OpDefinition<A, R>): OpDefinition<A, R> {
  return d;
}

type Scalar<T extends FieldType> = T extends "bytes"
  ? Uint8Array
  : T extends "text"
    ? string
    : T extends "uint"
      ? number
      : T extends "bool"
        ? boolean
        : T extends "array"
          ? CborValue[]
          : T extends "map"
            ? CborMap
            : CborValue;

/** The TypeScript type of a value a field spec admits. */
export type ValueOf<F extends FieldSpec> = (
  F extends { type: "array"; items: infer I extends FieldSpec }
    ? ValueOf<I>[]
    : F extends { type: "map"; fields: infer S extends Shape }
      ? ShapeOf<S>
      : F extends { type: "map"; values: infer V extends FieldSpec }
        ? { [name: string]: ValueOf<V> }
        : Scalar<F["type"]>
) extends infer T
  ? F extends { nullable: true }
    ? T | null
    : T
  : never;

type RequiredKeys<S extends Shape> = { [K in keyof S]: S[K] extends { required: true } ? K : never }[keyof S];
type Flatten<T> = { [K in keyof T]: T[K] };

/** The TypeScript type of a map a shape describes: required fields present, the others optional. */
export type ShapeOf<S extends Shape> = Flatten<
  { -readonly [K in RequiredKeys<S>]: ValueOf<S[K]> } & { -readonly [K in Exclude<keyof S, RequiredKeys<S>>]?: ValueOf<S[K]> }
>;

/** The arguments of an op, as a handler reads them and a client sends them. */
export type ArgsOf<D extends OpDefinition> = D extends OpDefinition<infer A, Shape> ? ShapeOf<A> : never;
/** The payload of an op's answer. */
export type ResultOf<D extends OpDefinition> = D extends OpDefinition<Shape, infer R> ? ShapeOf<R> : never;
