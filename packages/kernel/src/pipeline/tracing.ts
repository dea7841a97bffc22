import { type Context, context, propagation, ROOT_CONTEXT, type Span, SpanStatusCode, trace } from "@opentelemetry/api";
import { KERNEL_VERSION } from "../version.js";

// Through @opentelemetry/api only: without an SDK installed by the embedder these are no-ops;
// with one, each request is a span (child of the caller's traceparent when a propagator is
// registered) with a child span per pipeline stage.
const tracer = trace.getTracer("kpip-kernel", KERNEL_VERSION);

export interface RequestTrace {
  span: Span;
  ctx: Context;
  /** The span records (an SDK sampled it): only then do stages get spans of their own. */
  recording: boolean;
}

export function startRequestSpan(traceparent: string | undefined, attributes: Record<string, string | number>): RequestTrace {
  const parent = traceparent ? propagation.extract(ROOT_CONTEXT, { traceparent }) : context.active();
  const span = tracer.startSpan("kpip.request", { attributes }, parent);
  const recording = span.isRecording();
  // A context for child spans only when they are recorded (without an SDK: a context copy per request saved).
  return { span, ctx: recording ? trace.setSpan(parent, span) : parent, recording };
}

/**
 * Runs one pipeline stage, `f(arg)`, inside its own child span. Without a recording tracer (no
 * SDK) the stage runs bare: no span, no extra promise, and no closure, since the stage's function
 * and its argument come apart (callers pass a function made once, not one per request).
 */
export function stage<A, T>(t: RequestTrace, name: string, f: (arg: A) => T, arg: A): T | Promise<Awaited<T>> {
  return t.recording ? traced(t, name, f, arg) : f(arg);
}

async function traced<A, T>(t: RequestTrace, name: string, f: (arg: A) => T, arg: A): Promise<Awaited<T>> {
  const span = tracer.startSpan(name, undefined, t.ctx);
  try {
    return await f(arg);
  } catch (e) {
    span.recordException(e as Error);
    span.setStatus({ code: SpanStatusCode.ERROR });
    throw e;
  } finally {
    span.end();
  }
}

export function endRequestSpan(t: RequestTrace, op: string, status: string, errorClass: string | undefined): void {
  if (!t.recording) return t.span.end();
  t.span.setAttributes({ "kpip.op": op, "kpip.status": status, ...(errorClass ? { "kpip.error_class": errorClass } : {}) });
  if (status === "FAILURE") t.span.setStatus({ code: SpanStatusCode.ERROR, message: errorClass ?? "FAILURE" });
  t.span.end();
}
