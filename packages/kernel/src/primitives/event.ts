import { eventEmit, eventSubscribe, eventUnsubscribe } from "@kpip/protocol";
import type { EventBus, EventSink } from "../events/bus.js";
import { implement } from "./implement.js";
import { OpError, type PrimitiveFamily } from "./types.js";

/** Sessions an emit's record names (the rest counted in `toOthers`): its size stays bounded. */
export const EMIT_SESSIONS_NAMED = 16;

/** event.emit / subscribe / unsubscribe on topic:// names and patterns. */
export function eventFamily(bus: EventBus, sinkOf: (session: string) => EventSink | undefined): PrimitiveFamily {
  const sink = (session: string) => {
    const s = sinkOf(session);
    if (!s) throw new OpError("INTERNAL", "the session is gone");
    return s;
  };
  return {
    name: "event",
    ops: [
      implement(eventEmit, {
        owns: (ctx) => ctx.target.segments[0] !== "kernel" || "topic://kernel/… is reserved for the kernel's own events",
        handler: (ctx) => {
          if (ctx.target.segments.some((x) => x === "*" || x === "**"))
            throw new OpError("SEMANTIC", "emit to a topic name, not a pattern");
          // On the record too: whether what was emitted reached anyone, and whom — the sessions its
          // subscriptions were on (a subscription also ends unrecorded, when its grant expires, so
          // the subscribe records alone cannot say who was still listening).
          const to: { persona: string; session: string }[] = [];
          const seen = new Set<string>();
          const delivered = bus.emit(
            ctx.targetUri,
            ctx.args.data === undefined ? null : ctx.args.data,
            undefined,
            undefined,
            (s) => {
              if (seen.has(s.id)) return;
              seen.add(s.id);
              if (to.length < EMIT_SESSIONS_NAMED) to.push({ persona: s.persona, session: s.id });
            },
          );
          const rest = seen.size - to.length;
          const audit = { subscribers: delivered, ...(to.length ? { to } : {}), ...(rest ? { toOthers: rest } : {}) };
          return { status: "SUCCESS", payload: { subscribers: delivered }, audit };
        },
      }),
      implement(eventSubscribe, {
        // The subscription lives as long as the capability that authorized it (revoked: ended at once; expired: at its next event).
        handler: (ctx) => {
          const subscription = bus.subscribe(sink(ctx.session), ctx.targetUri, ctx.grant);
          // Its id on the record: the unsubscribe that ended it names the same.
          return { status: "SUCCESS", payload: { subscription }, audit: { subscription } };
        },
      }),
      implement(eventUnsubscribe, {
        handler: (ctx) => {
          // On the pattern it was made on, as storage.unwatch: the grant the target was authorized
          // by covers that subscription, not any of the session's (another token's, a watch).
          const s = sink(ctx.session);
          const id = ctx.args.subscription;
          if (bus.patternOf(s, id) !== ctx.targetUri || !bus.unsubscribe(s, id))
            throw new OpError("SEMANTIC", `no subscription ${id} of ${ctx.targetUri} on this session`);
          return { status: "SUCCESS", payload: { unsubscribed: ctx.args.subscription } };
        },
      }),
    ],
  };
}
