import { defineOp } from "./define.js";

/* event.* on topic:// names and patterns. */

export const eventEmit = defineOp({
  op: "event.emit",
  description: "Publish an event on topic://<name> to every matching subscription.",
  targets: ["topic"],
  args: { data: { type: "any", description: "the event's payload" } },
  result: { subscribers: { type: "uint", required: true, description: "subscriptions it was delivered to" } },
  idempotent: false,
  effects: true,
});

export const eventSubscribe = defineOp({
  op: "event.subscribe",
  description:
    "Receive EVENT frames for topics matching topic://<pattern> (* one segment, ** any depth; at most 32 segments and 4 *, PROTOCOL §9.6) until unsubscribed or the session ends.",
  targets: ["topic"],
  sessionState: "a subscription, holding one of the session's subscription slots; its EVENTs go to the session",
  args: {},
  result: {
    subscription: {
      type: "uint",
      required: true,
      description: "the subscription's id: the EVENT frames' `stream` and `subscription`",
    },
  },
  idempotent: false,
  effects: false,
});

export const eventUnsubscribe = defineOp({
  op: "event.unsubscribe",
  description:
    "End a subscription of this session, named with the pattern it was made on (SEMANTIC for another pattern's, as for an unknown id).",
  targets: ["topic"],
  sessionState: "ends a subscription of the session, whoever on it made it",
  args: { subscription: { type: "uint", required: true, description: "the id event.subscribe returned" } },
  result: { unsubscribed: { type: "uint", required: true, description: "the subscription ended" } },
  idempotent: true,
  effects: false,
});

export const eventOps = [eventEmit, eventSubscribe, eventUnsubscribe] as const;
