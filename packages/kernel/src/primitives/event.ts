import type { EventBus, EventSink } from "../events/bus.js";
import { OpError, type PrimitiveFamily } from "./types.js";

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
      {
        op: "event.emit",
        description: "Publish an event on topic://<name> to every matching subscription.",
        targets: ["topic"],
        args: { data: { type: "any", description: "the event's payload" } },
        idempotent: false,
        effects: true,
        owns: (ctx) => ctx.target.segments[0] !== "kernel" || "topic://kernel/… is reserved for the kernel's own events",
        handler: (ctx) => {
          if (ctx.target.segments.some((x) => x === "*" || x === "**"))
            throw new OpError("SEMANTIC", "emit to a topic name, not a pattern");
          const delivered = bus.emit(ctx.targetUri, ctx.args.data === undefined ? null : ctx.args.data);
          return { status: "SUCCESS", payload: { subscribers: delivered } };
        },
      },
      {
        op: "event.subscribe",
        description:
          "Receive EVENT frames for topics matching topic://<pattern> (* one segment, ** any depth) until unsubscribed or the session ends.",
        targets: ["topic"],
        args: {},
        idempotent: false,
        effects: false,
        // The subscription lives as long as the capability that authorized it (revoked: ended at once; expired: at its next event).
        handler: (ctx) => ({
          status: "SUCCESS",
          payload: { subscription: bus.subscribe(sink(ctx.session), ctx.targetUri, bus.guardFor(ctx.grant)) },
        }),
      },
      {
        op: "event.unsubscribe",
        description: "End a subscription of this session.",
        targets: ["topic"],
        args: { subscription: { type: "uint", required: true, description: "the id event.subscribe returned" } },
        idempotent: true,
        effects: false,
        handler: (ctx) => {
          const ok = bus.unsubscribe(sink(ctx.session), ctx.args.subscription as number);
          if (!ok) throw new OpError("SEMANTIC", `no subscription ${ctx.args.subscription} on this session`);
          return { status: "SUCCESS", payload: { unsubscribed: ctx.args.subscription as number } };
        },
      },
    ],
  };
}
