import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { type CapabilityRef, encodeIntent, type Intent, type Request, type Response } from "@kpip/protocol";
import { AuditLog } from "../src/audit/log.js";
import { RefusalLimiter } from "../src/audit/refusals.js";
import type { AuthorizationRequest, Authorizer, Decision } from "../src/auth/authorizer.js";
import { createLogger } from "../src/log.js";
import type { KernelMetrics } from "../src/metrics/metrics.js";
import { Admission } from "../src/pipeline/admission.js";
import { DedupeCache } from "../src/pipeline/dedupe.js";
import { Pipeline, type PipelineDeps, type SessionView } from "../src/pipeline/pipeline.js";
import { Router } from "../src/primitives/router.js";
import { OpError, type PrimitiveFamily } from "../src/primitives/types.js";
import { ResourceLedger } from "../src/resources/ledger.js";
import { HandleTable } from "../src/session/handles.js";
import type { PeerLogLimiter } from "../src/session/log-limit.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { AuditRow } from "../src/store/types.js";

// The pipeline on its own (docs/architecture.md "One request, one path"): built over an
// in-memory store and audit log, no kernel process, no socket. Requests go in as the session
// would hand them over; what comes out is the answer and the records.

/** Handles a test authorizer treats as: 1 allows, 2 a valid capability without the right; anything else is no capability. */
export const ALLOW = 1;
export const DENY = 2;

/** An Authorizer of its own: the decision side is pluggable, and these tests need no tokens. */
export const handleAuthorizer: Authorizer = {
  authorize(r: AuthorizationRequest): Decision {
    if (r.caps.includes(ALLOW)) return { allowed: true, capIds: ["h1:allow"] };
    if (r.caps.includes(DENY))
      return { allowed: false, errorClass: "PERMISSION", message: "handle 2 does not grant it", capIds: ["h2:deny"] };
    return { allowed: false, errorClass: "CAPABILITY", message: "no usable capability", capIds: [] };
  },
};

/** Ops to drive the stages: what each handler saw is counted, so a refusal can be shown to have stopped before it. */
export function testFamily(ran: string[]): PrimitiveFamily {
  return {
    name: "t",
    ops: [
      {
        op: "t.read",
        description: "a read-only op",
        targets: ["kernel", "obj"],
        args: { n: { type: "uint", description: "a number" } },
        idempotent: true,
        effects: false,
        handler: (ctx) => {
          ran.push(`read:${ctx.requestId}`);
          return { status: "SUCCESS", payload: { n: (ctx.args.n as number | undefined) ?? 0 } };
        },
      },
      {
        op: "t.write",
        description: "an op with effects whose target belongs to the persona its path names",
        targets: ["persona"],
        args: {},
        idempotent: false,
        effects: true,
        owns: (ctx) => ctx.target.segments[0] === ctx.persona || `persona://${ctx.target.segments[0]} is not the caller's`,
        handler: (ctx) => {
          ran.push(`write:${ctx.requestId}`);
          return { status: "SUCCESS" };
        },
      },
      {
        op: "t.fail",
        description: "a handler that throws its own class",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: () => {
          throw new OpError("RESOURCE", "the op's own failure");
        },
      },
    ],
  };
}

export interface Unit {
  pipeline: Pipeline;
  /** The answers the pipeline counted in its metrics ("op status class"), in the order it counted them. */
  counted: string[];
  store: SqliteStore;
  audit: AuditLog;
  ran: string[];
  session: SessionView & { inFlight: number; closing: boolean };
  /** Runs one request on the session (counted in flight while it runs, as the session does). */
  send(req: Request): Promise<Response>;
  records(): AuditRow[];
  close(): void;
}

export interface UnitOptions {
  authorizer?: Authorizer;
  /** Where INTERNAL failures are logged (default: the silent logger). */
  peerLog?: PeerLogLimiter;
  maxInFlight?: number;
  refusalRate?: number;
  families?: PrimitiveFamily[];
  /** The authorizer and every handler answer with a promise (as `async` ones do), never synchronously. */
  asyncStages?: boolean;
  /**
   * Records commit only on the turn's check phase, never mid-turn once a batch has waited 1 ms
   * (AuditLogOptions.flushAfterMs): two runs of the same requests then commit at the same points.
   */
  commitOnTurn?: boolean;
  /** The pipeline's note of a revocation's outcome record (default: none). */
  revocationRecorded?: PipelineDeps["revocationRecorded"];
  /** The kernel's storage condition (default: none). */
  space?: PipelineDeps["space"];
}

export function unit(opts: UnitOptions = {}): Unit {
  const store = new SqliteStore(":memory:");
  const audit = new AuditLog(store, "k-unit", generateKeyPairSync("ed25519").privateKey, {
    batchMax: 512,
    checkpointEvery: 10_000,
    ...(opts.commitOnTurn ? { flushAfterMs: Number.POSITIVE_INFINITY } : {}),
  });
  const router = new Router();
  const ran: string[] = [];
  const late = opts.asyncStages === true;
  for (const f of [testFamily(ran), ...(opts.families ?? [])]) router.register(late ? asPromises(f) : f);
  const rate = opts.refusalRate ?? 1000;
  const counted: string[] = [];
  const pipeline = new Pipeline({
    // The one metric the pipeline updates: each answer counted once, by op, status and class.
    metrics: {
      requests: { answered: (op: string, status: string, error?: string) => counted.push(`${op} ${status} ${error ?? ""}`) },
    } as unknown as KernelMetrics,
    router,
    authorizer: late ? promisingAuthorizer(opts.authorizer ?? handleAuthorizer) : (opts.authorizer ?? handleAuthorizer),
    audit,
    dedupe: new DedupeCache(60_000, store),
    ledger: new ResourceLedger(store, { workspaceStorageBytes: 0 }),
    log: createLogger("silent", false),
    admission: new Admission({ maxInFlight: opts.maxInFlight ?? 8, maxSessions: 4, adminReserve: 1, adminPersona: "admin" }),
    refusals: new RefusalLimiter({ sessionRate: rate, personaRate: rate, floodMax: 0, intentMaxBytes: 1024 }),
    ...(opts.peerLog ? { peerLog: opts.peerLog } : {}),
    ...(opts.revocationRecorded ? { revocationRecorded: opts.revocationRecorded } : {}),
    ...(opts.space ? { space: opts.space } : {}),
  });
  const session = {
    id: "s-1",
    persona: "alice",
    version: 1,
    instance: "00",
    signal: new AbortController().signal,
    handles: new HandleTable(),
    maxBody: 1 << 20,
    inFlight: 0,
    closing: false,
  };
  return {
    pipeline,
    store,
    audit,
    ran,
    counted,
    session,
    async send(req) {
      session.inFlight++;
      try {
        return await pipeline.handle(session, req);
      } finally {
        session.inFlight--;
      }
    },
    records: () => store.queryAudit({ limit: 10_000 }),
    close() {
      audit.close();
      store.close();
    },
  };
}

/** A call's value as a promise, its throw as a rejected one: what an `async` function returns. */
function promised<T>(f: () => T | Promise<T>): Promise<T> {
  try {
    return Promise.resolve(f());
  } catch (e) {
    return Promise.reject(e);
  }
}

/** The family with every handler answering through a promise. */
function asPromises(f: PrimitiveFamily): PrimitiveFamily {
  return { ...f, ops: f.ops.map((o) => ({ ...o, handler: (ctx) => promised(() => o.handler(ctx)) })) };
}

/** An authorizer whose decisions come as promises (an embedder's may, whatever the interface says). */
function promisingAuthorizer(a: Authorizer): Authorizer {
  return { authorize: (r) => promised(() => a.authorize(r)) as unknown as Decision };
}

let nextId = 1;
export function request(intent: Intent | Uint8Array, caps: CapabilityRef[] = [ALLOW], over: Partial<Request> = {}): Request {
  return {
    version: 1,
    persona: "alice",
    id: nextId++,
    intent: intent instanceof Uint8Array ? intent : encodeIntent(intent),
    context: { persona: "alice" },
    caps,
    ...over,
  };
}

export const read = (args: Record<string, number> = {}): Intent => ({ op: "t.read", target: "kernel://", args });

/** The one record of a request. */
export function onlyRecord(u: Unit, id: number): AuditRow {
  const rows = u.records().filter((r) => r.requestId === id);
  assert.equal(rows.length, 1, `one record for request ${id}, got ${rows.map((r) => r.phase).join(",")}`);
  return rows[0] as AuditRow;
}
