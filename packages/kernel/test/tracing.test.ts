import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Context, type Span, type Tracer, type TracerProvider, trace } from "@opentelemetry/api";
import { removeHome, startKernel } from "./harness.js";

interface Recorded {
  name: string;
  parent: string | undefined;
  id: string;
  attributes: Record<string, unknown>;
  ended: boolean;
}

/** A minimal recording tracer provider, standing in for an embedder's OpenTelemetry SDK. */
function recordingProvider(spans: Recorded[]): TracerProvider {
  let n = 0;
  const tracer: Tracer = {
    startSpan(name: string, opts?: { attributes?: Record<string, unknown> }, ctx?: Context): Span {
      const parent = ctx ? trace.getSpan(ctx)?.spanContext().spanId : undefined;
      const rec: Recorded = {
        name,
        parent,
        id: String(++n).padStart(16, "0"),
        attributes: { ...(opts?.attributes ?? {}) },
        ended: false,
      };
      spans.push(rec);
      const span = {
        spanContext: () => ({ traceId: "1".repeat(32), spanId: rec.id, traceFlags: 1 }),
        setAttribute: (k: string, v: unknown) => {
          rec.attributes[k] = v;
          return span;
        },
        setAttributes: (a: Record<string, unknown>) => {
          Object.assign(rec.attributes, a);
          return span;
        },
        addEvent: () => span,
        addLink: () => span,
        addLinks: () => span,
        setStatus: () => span,
        updateName: () => span,
        end: () => {
          rec.ended = true;
        },
        isRecording: () => true,
        recordException: () => {},
      } as unknown as Span;
      return span;
    },
    startActiveSpan: (() => {
      throw new Error("unused");
    }) as never,
  };
  return { getTracer: () => tracer };
}

describe("OpenTelemetry spans", () => {
  it("wraps each request and its pipeline stages in spans when an SDK is installed", async () => {
    const spans: Recorded[] = [];
    trace.setGlobalTracerProvider(recordingProvider(spans));
    try {
      const t = await startKernel();
      const c = await t.admin();
      await c.storage.write("obj://ws1/traced", "x");
      await t.stop();
      removeHome(t.home);
      const req = spans.find((s) => s.name === "kpip.request" && s.attributes["kpip.op"] === "storage.write");
      assert.ok(req, "a request span");
      assert.equal(req.attributes["kpip.status"], "SUCCESS");
      assert.ok(req.ended);
      const children = spans.filter((s) => s.parent === req.id).map((s) => s.name);
      assert.deepEqual(children, ["kpip.authorize", "kpip.audit.intent", "kpip.execute", "kpip.audit.outcome"]);
    } finally {
      trace.disable();
    }
  });
});
