import type { CborValue } from "@kpip/protocol";
import type { EventBus } from "./bus.js";

/** What a kernel event is about: a deferred op or an agent. */
export type KernelEventKind = "ops" | "agents";

/**
 * The one place kernel topic names are built (PROTOCOL §9.6): an event about a persona's op or
 * agent is on `topic://kernel/personas/<persona>/<kind>/<id>`, and is delivered only to that
 * persona, the personas it is within (a spawner sees its agents), and the operator — whatever
 * topic pattern a subscriber was granted.
 */
export function kernelTopic(kind: KernelEventKind, persona: string, id: string): string {
  return `topic://kernel/personas/${persona}/${kind}/${id}`;
}

/**
 * Emits a kernel event about `persona`'s op or agent, which began at `began` (an op's submission,
 * an agent's start): a persona registered under that id since is another holder and does not get
 * it (EventBus.emit). Returns how many subscriptions got it.
 */
export function emitKernelEvent(
  bus: EventBus,
  kind: KernelEventKind,
  persona: string,
  id: string,
  data: CborValue,
  began: number,
): number {
  return bus.emit(kernelTopic(kind, persona, id), data, persona, began);
}
