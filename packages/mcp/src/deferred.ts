import type { KernelClient, OpResponse } from "@kpip/client";
import { KpipError, opCancel, opResult, opStatusOp, type Response } from "@kpip/protocol";
import type { CallToolResult, ServerNotification } from "@modelcontextprotocol/sdk/types.js";
import type { GrantView } from "./grant.js";
import { answerToResult, failureResult, localFailure, successResult } from "./results.js";

/** What a tool call carries from the MCP request into the KPIP requests it makes. */
export interface ToolCallContext {
  /** context.execution of every KPIP request the call makes: the host's name and version, the MCP request id. */
  execution: string;
  /** Aborted when the host cancels the call (notifications/cancelled). */
  signal: AbortSignal;
  /**
   * Aborted when the host closed its input (stdio): calls still being answered are, but an op
   * still running is cancelled rather than followed for a host that has gone.
   */
  inputEnded?: AbortSignal;
  /** Present when the host asked for progress notifications. */
  progressToken: string | number | undefined;
  notify(n: ServerNotification): Promise<void>;
  /**
   * The kernel refused a request the call made besides the one it answers with (op.status,
   * op.cancel, event.subscribe): counted against the host session's refusal rate like a refused
   * answer (every host shares the kernel session the kernel ends past its refusal flood bound).
   */
  refused?(): void;
}

type Subscription = Awaited<ReturnType<KernelClient["subscribe"]>>;

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/**
 * A DEFERRED answer followed to its end: a progress notification at once (with the op:// id),
 * then one on every state change and about once a second while it runs, then the op's result
 * (op.result) as the tool result. Its completion event (topic://kernel/personas/<persona>/ops/<id>) wakes the wait
 * when the token allows subscribing to it; otherwise op.status is polled with backoff. A host
 * cancellation becomes op.cancel. Every one of these is a request of its own, checked and audited.
 */
/** What following an op needs from the gateway (the gateway is one; no import of it, so no cycle). */
export interface DeferredHost {
  readonly client: KernelClient;
  /** Longest pause between op.status polls when no completion event can be awaited. */
  readonly pollMaxMs: number;
  /** What the gateway's tokens allow now. */
  grants(): GrantView;
}

export async function followDeferred(g: DeferredHost, deferred: Response, ctx: ToolCallContext): Promise<CallToolResult> {
  const opUri = (deferred.payload as { op?: unknown } | undefined)?.op;
  if (typeof opUri !== "string" || !opUri.startsWith("op://"))
    return successResult("DEFERRED", deferred.payload, "op://", deferred.id);
  const client = g.client;
  const opts = { execution: ctx.execution };
  let sent = 0;
  const progress = async (message: string) => {
    if (ctx.progressToken === undefined) return;
    sent++;
    await ctx
      .notify({ method: "notifications/progress", params: { progressToken: ctx.progressToken, progress: sent, message } })
      .catch(() => {});
  };

  let wake: () => void = () => {};
  let cancelled = false;
  const onAbort = () => {
    if (cancelled) return;
    cancelled = true;
    void client.opRequest(opCancel, opUri, {}, opts).then(
      (r) => {
        if (r.status === "FAILURE") ctx.refused?.();
      },
      () => {},
    );
    wake();
  };
  ctx.signal.addEventListener("abort", onAbort, { once: true });
  ctx.inputEnded?.addEventListener("abort", onAbort, { once: true });
  let sub: Subscription | undefined;
  try {
    await progress(`${opUri} deferred`);
    if (ctx.signal.aborted || ctx.inputEnded?.aborted) onAbort();
    // The kernel's events about a persona's ops are on its own prefix (PROTOCOL §9.6).
    const topic = `topic://kernel/personas/${client.persona}/ops/${opUri.slice("op://".length)}`;
    // Only when it may also unsubscribe: a subscription it could not end would outlive the call.
    const grants = g.grants();
    if (grants.allows("event.subscribe", topic) && grants.allows("event.unsubscribe", topic)) {
      try {
        const s = await client.subscribe(topic, opts);
        sub = s;
        void (async () => {
          for await (const _ of s) {
            wake();
            break;
          }
        })().catch(() => {});
      } catch (e) {
        if (e instanceof KpipError) ctx.refused?.();
        sub = undefined; // polling alone still follows it
      }
    }
    const started = Date.now();
    let delay = 50;
    let last = "";
    let lastAt = 0;
    for (;;) {
      if (cancelled) {
        const why = ctx.signal.aborted ? "at the host's request" : "as the host closed its input";
        return failureResult("CANCELLED", `${opUri} was cancelled ${why}`);
      }
      let s: OpResponse<typeof opStatusOp>;
      try {
        s = await client.opRequest(opStatusOp, opUri, {}, opts);
      } catch (e) {
        return localFailure(e);
      }
      if (s.status !== "SUCCESS") {
        // Not an answer the host sees as a refusal (it gets the DEFERRED one), but the kernel counted it.
        if (s.status === "FAILURE") ctx.refused?.();
        // The token does not let the gateway follow the op: hand over the DEFERRED answer as it is.
        const r = successResult("DEFERRED", deferred.payload, opUri, deferred.id);
        r.content.push({ type: "text", text: `cannot follow ${opUri}: op.status answered ${s.error ?? s.status}: ${s.message}` });
        return r;
      }
      const state = s.payload.state;
      if (TERMINAL.has(state)) break;
      if (state !== last || Date.now() - lastAt >= 1000) {
        await progress(`${opUri} ${state} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
        last = state;
        lastAt = Date.now();
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      delay = Math.min(delay * 2, sub ? 5 * g.pollMaxMs : g.pollMaxMs);
    }
    try {
      return answerToResult(await client.opRequest(opResult, opUri, {}, opts), opUri);
    } catch (e) {
      return localFailure(e);
    }
  } finally {
    ctx.signal.removeEventListener("abort", onAbort);
    ctx.inputEnded?.removeEventListener("abort", onAbort);
    await sub?.unsubscribe().catch(() => {});
  }
}
