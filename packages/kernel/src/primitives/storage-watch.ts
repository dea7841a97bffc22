import { storageUnwatch, storageWatch } from "@kpip/protocol";
import type { EventBus, EventSink } from "../events/bus.js";
import { implement } from "./implement.js";
import { OpError, type PrimitiveDeclaration } from "./types.js";

/**
 * Storage change notices (PROTOCOL §9.8). A watch is an event-bus subscription whose pattern is
 * an obj:// pattern, so it has the bus's bounds (subscriptions per session, per persona and in
 * the kernel; queued bytes; gaps for slow readers). Only `storage.watch` makes one, authorized
 * as `storage.read` on the whole pattern (the subset test of grants): no event topic names
 * obj://, so holding `event.subscribe` on anything teaches nobody about writes.
 */
export interface WatchDeps {
  bus: EventBus;
  sinkOf(session: string): EventSink | undefined;
}

/** What a change notice says: the object, its generation after the change, and what happened. */
export type ChangeKind = "write" | "delete";

/** Tells the watchers of `obj://<workspace>/<path>` it changed; called once the change has committed. */
export function storageChanged(bus: EventBus, workspace: string, path: string, generation: number, kind: ChangeKind): void {
  const uri = `obj://${workspace}/${path}`;
  bus.emit(uri, { uri, generation, kind });
}

/** storage.watch / storage.unwatch on obj://<workspace>/<path or pattern>. */
export function watchOps(d: WatchDeps): PrimitiveDeclaration[] {
  const sink = (session: string) => {
    const s = d.sinkOf(session);
    if (!s) throw new OpError("INTERNAL", "the session is gone");
    return s;
  };
  return [
    implement(storageWatch, {
      handler: (ctx) => {
        // The pattern is what was authorized, exactly: a bare workspace is no object (watch obj://<ws>/** for all of it).
        if (ctx.target.segments.length < 2)
          throw new OpError("SEMANTIC", "storage.watch needs obj://<workspace>/<path or pattern>, e.g. obj://ws1/**");
        // `**` means something only last (as in grants); elsewhere the watch could match nothing.
        if (ctx.target.segments.slice(0, -1).includes("**"))
          throw new OpError("SEMANTIC", "'**' may only be the last segment of a watch pattern");
        const pattern = ctx.targetUri;
        // It lives as long as the capability that authorized it, as every subscription does.
        const subscription = d.bus.subscribe(sink(ctx.session), pattern, ctx.grant);
        return { status: "SUCCESS", payload: { subscription, pattern }, audit: { subscription } };
      },
    }),
    implement(storageUnwatch, {
      handler: (ctx) => {
        const id = ctx.args.subscription;
        const s = sink(ctx.session);
        const p = d.bus.patternOf(s, id);
        if (p !== ctx.targetUri || !d.bus.unsubscribe(s, id))
          throw new OpError("SEMANTIC", `no watch ${id} of ${ctx.targetUri} on this session`);
        return { status: "SUCCESS", payload: { unwatched: id } };
      },
    }),
  ];
}
