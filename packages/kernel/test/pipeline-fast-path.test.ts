import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type CapabilityRef, encodeCanonical, encodedBody, type Intent, type Request, type Response } from "@kpip/protocol";
import fc from "fast-check";
import type { Authorizer, Decision } from "../src/auth/authorizer.js";
import { OpError, type PrimitiveFamily } from "../src/primitives/types.js";
import type { AuditRow } from "../src/store/types.js";
import { ALLOW, DENY, handleAuthorizer, read, request, type Unit, unit } from "./pipeline-kit.js";

// The pipeline runs a request synchronously up to its first real wait (an audit commit, a sliced
// hash, a handler or authorizer that returns a promise). Pinned here to the definition it replaced,
// in which every stage was awaited: the same requests through a pipeline whose authorizer and
// handlers all answer with promises give the same answers, the same records (field by field, but
// for time and duration) and run the handlers in the same order; in both, every answer comes only
// once the records of its request are committed. Both commit only on the turn's check phase: a
// commit mid-turn (a batch that waited 1 ms, by the clock) may end a first attempt before a later
// request of the same id reaches dedupe in one run and not in the other (the awaited run's
// requests go on over microtask turns), and both outcomes are right.

/** Ops beyond the kit's: an effect made atomically (dedupe record in its transaction), a slow read, a bug, a transient failure. */
function extra(ran: string[]): PrimitiveFamily {
  const op = (name: string, effects: boolean, handler: PrimitiveFamily["ops"][number]["handler"]) => ({
    op: name,
    description: name,
    targets: ["kernel" as const],
    args: { n: { type: "uint" as const, description: "a number" } },
    idempotent: !effects,
    effects,
    handler,
  });
  return {
    name: "p",
    ops: [
      op("p.put", true, (ctx) => {
        ran.push(`put:${ctx.requestId}`);
        return ctx.atomically(() => ({ status: "SUCCESS", payload: { n: (ctx.args.n as number | undefined) ?? 0 } }));
      }),
      op("p.slow", false, (ctx) => {
        ran.push(`slow:${ctx.requestId}`);
        return new Promise((ok) => setImmediate(() => ok({ status: "SUCCESS", payload: { later: true } })));
      }),
      op("p.boom", false, (ctx) => {
        ran.push(`boom:${ctx.requestId}`);
        throw new Error("a bug in the handler");
      }),
      op("p.busy", true, (ctx) => {
        ran.push(`busy:${ctx.requestId}`);
        throw new OpError("RESOURCE", "try again");
      }),
    ],
  };
}

const intents: fc.Arbitrary<Intent | Uint8Array> = fc.oneof(
  fc.nat(3).map((n) => ({ op: "t.read", target: "kernel://", args: { n } })),
  fc.nat(3).map((n) => ({ op: "p.put", target: "kernel://", args: { n } })),
  fc.constantFrom<Intent | Uint8Array>(
    { op: "p.slow", target: "kernel://", args: {} },
    { op: "p.boom", target: "kernel://", args: {} },
    { op: "p.busy", target: "kernel://", args: {} },
    { op: "t.fail", target: "kernel://", args: {} },
    { op: "t.write", target: "persona://alice", args: {} },
    { op: "t.write", target: "persona://bob", args: {} },
    { op: "t.read", target: "persona://alice", args: {} },
    { op: "t.nope", target: "kernel://", args: {} },
    new Uint8Array([0xff]),
  ),
);

interface Step {
  intent: Intent | Uint8Array;
  caps: CapabilityRef[];
  /** Reuse the id of an earlier step (a retry, or a conflict when the intent differs). */
  reuse: number | null;
  /** Sent in the same burst as the step before it (as frames of one socket read are). */
  together: boolean;
}

const steps = fc.array(
  fc.record<Step>({
    intent: intents,
    caps: fc.constantFrom<CapabilityRef[]>([ALLOW], [ALLOW], [ALLOW], [DENY], []),
    reuse: fc.option(fc.nat(30), { nil: null }),
    together: fc.boolean(),
  }),
  { minLength: 1, maxLength: 20 },
);

/** What a record says, but for when it was written and how long its request took. */
function gist(r: AuditRow): unknown[] {
  const b = (x: Uint8Array | null) => (x ? Buffer.from(x).toString("hex") : null);
  return [r.phase, r.op, r.target, r.status, r.errorClass, r.message, r.caps, b(r.intentHash), b(r.intent), r.detail, r.session];
}

interface Outcome {
  answers: Response[];
  records: Map<number, string[]>;
  ran: string[];
}

async function play(u: Unit, ran: string[], reqs: Request[], bursts: number[][]): Promise<Outcome> {
  const answers: Response[] = [];
  for (const burst of bursts) {
    const done = burst.map(async (i) => {
      const req = reqs[i] as Request;
      const resp = await u.send(req);
      // Nothing is answered before its records are committed: the store has this attempt's final
      // record (a refusal, a read's one record, an effect's outcome, a retry's replay) with its answer.
      const rows = u.records().filter((r) => r.requestId === req.id && r.phase !== "intent");
      assert.ok(
        rows.some((r) => r.status === resp.status && (r.errorClass ?? undefined) === resp.error),
        `request ${req.id} answered ${resp.status} ${resp.error ?? ""} with its record committed`,
      );
      answers[i] = resp;
    });
    await Promise.all(done);
  }
  // Per request id: the records of concurrent attempts under one id (a retry, a conflict) may
  // interleave either way, as they always could; their set is what must not change.
  const records = new Map<number, string[]>();
  for (const r of u.records()) {
    const id = r.requestId ?? -1;
    records.set(id, [...(records.get(id) ?? []), JSON.stringify(gist(r))].sort());
  }
  return { answers, records, ran: [...ran] };
}

describe("the pipeline's synchronous path (property)", () => {
  it("answers, records and handler order are those of a pipeline whose every stage is awaited", async () => {
    await fc.assert(
      fc.asyncProperty(steps, async (plan) => {
        const reqs: Request[] = [];
        for (const [i, s] of plan.entries()) {
          const base = request(s.intent, s.caps);
          const earlier = s.reuse === null || i === 0 ? undefined : reqs[s.reuse % i];
          reqs.push(earlier ? { ...base, id: earlier.id } : base);
        }
        const bursts: number[][] = [];
        for (const [i, s] of plan.entries()) {
          if (s.together && bursts.length > 0) bursts[bursts.length - 1]?.push(i);
          else bursts.push([i]);
        }
        const ranSync: string[] = [];
        const ranAsync: string[] = [];
        const sync = unit({ families: [extra(ranSync)], commitOnTurn: true });
        const awaited = unit({ families: [extra(ranAsync)], asyncStages: true, commitOnTurn: true });
        try {
          const a = await play(sync, ranSync, reqs, bursts);
          const b = await play(awaited, ranAsync, reqs, bursts);
          assert.deepEqual(a.answers, b.answers);
          assert.deepEqual([...a.records].sort(byId), [...b.records].sort(byId));
          // The kit's own handlers count into its `ran`: both lists together are the order they ran in.
          assert.deepEqual([...a.ran, ...sync.ran], [...b.ran, ...awaited.ran]);
          // Every answer is counted once, whichever way its request ended.
          const outcomes = (o: Outcome) => o.answers.map((r) => `${r.status} ${r.error ?? ""}`).sort();
          const counted = (u: Unit) => u.counted.map((c) => c.slice(c.indexOf(" ") + 1)).sort();
          assert.deepEqual(counted(sync), outcomes(a));
          assert.deepEqual(counted(awaited), outcomes(b));
          assert.deepEqual(sync.counted.sort(), awaited.counted.sort());
        } finally {
          sync.close();
          awaited.close();
        }
      }),
      { numRuns: 60, examples: [[COMMITTED_MID_TURN]] },
    );
  });

  it("a burst of requests on one session runs its handlers in arrival order, each answered after its commit", async () => {
    const ran: string[] = [];
    const u = unit({ families: [extra(ran)], maxInFlight: 64 });
    try {
      const reqs = Array.from({ length: 40 }, (_, i) =>
        request(
          i % 3 === 0
            ? { op: "p.put", target: "kernel://", args: { n: i } }
            : { op: "t.read", target: "kernel://", args: { n: i } },
        ),
      );
      const answers = await Promise.all(reqs.map((r) => u.send(r)));
      assert.ok(answers.every((a) => a.status === "SUCCESS"));
      // Reads run at once, puts once their intent records commit: each kind in arrival order.
      assert.deepEqual(
        u.ran,
        reqs.filter((_, i) => i % 3 !== 0).map((r) => `read:${r.id}`),
      );
      assert.deepEqual(
        ran,
        reqs.filter((_, i) => i % 3 === 0).map((r) => `put:${r.id}`),
      );
      const seq = (id: number, phase: string) => u.records().find((r) => r.requestId === id && r.phase === phase)?.seq ?? -1;
      const puts = reqs.filter((_, i) => i % 3 === 0);
      for (let i = 1; i < puts.length; i++) {
        assert.ok(
          seq((puts[i - 1] as Request).id, "intent") < seq((puts[i] as Request).id, "intent"),
          "intent records in arrival order",
        );
      }
    } finally {
      u.close();
    }
  });
});

/** Sends reads numbered `ns` at once through a pipeline deciding with `authorizer`: each answered, their handlers in arrival order. */
async function ranInArrivalOrder(authorizer: Authorizer, ns: number[]): Promise<void> {
  const u = unit({ authorizer, maxInFlight: 16 });
  try {
    const reqs = ns.map((n) => request(read({ n })));
    const answers = await Promise.all(reqs.map((r) => u.send(r)));
    assert.ok(answers.every((a) => a.status === "SUCCESS"));
    assert.deepEqual(
      u.ran,
      reqs.map((r) => `read:${r.id}`),
      "handlers in arrival order",
    );
  } finally {
    u.close();
  }
}

describe("the session's order and a failed first attempt", () => {
  it("a request whose decision comes as a promise is not overtaken by a later one of its session whose decision is at hand", async () => {
    // An embedder's authorizer may answer some requests later than others (a remote policy, a cache miss).
    const later: Authorizer = {
      authorize: (r) => {
        const d = handleAuthorizer.authorize(r);
        return (r.intent.args as { n?: number }).n === 1 ? Promise.resolve(d) : d;
      },
    };
    await ranInArrivalOrder(later, [1, 2, 3, 1, 4]);
  });

  it("a request that waited behind an earlier one and whose decision then comes later is not overtaken by a later one whose decision is at hand", async () => {
    // The first request's decision comes a turn later: the second waits for it, then its own
    // decision comes a turn later too. The third's is at hand, and must still wait for the second's.
    const later: Authorizer = {
      authorize: (r) => {
        const d = handleAuthorizer.authorize(r);
        if ((r.intent.args as { n?: number }).n !== 1) return d;
        return new Promise<Decision>((ok) => setImmediate(() => ok(d)));
      },
    };
    await ranInArrivalOrder(later, [1, 1, 2]);
  });

  it("a first attempt whose intent record did not commit leaves its ids free: the retry runs, once, on the record", async () => {
    const u = unit();
    try {
      const append = u.audit.appendRow.bind(u.audit);
      let failNext = true;
      u.audit.appendRow = (row, d) => {
        if (row.phase === "intent" && failNext) {
          failNext = false;
          return Promise.reject(new Error("audit commit failed"));
        }
        return append(row, d);
      };
      const req = request({ op: "t.write", target: "persona://alice/x", args: {} });
      await assert.rejects(u.send(req), /audit commit failed/);
      assert.deepEqual(u.ran, [], "nothing ran without its intent record");
      const retry = await u.send(req);
      assert.equal(retry.status, "SUCCESS");
      assert.deepEqual(u.ran, [`write:${req.id}`], "the retry ran, once");
      assert.deepEqual(
        u
          .records()
          .filter((r) => r.requestId === req.id)
          .map((r) => r.phase),
        ["intent", "outcome"],
      );
    } finally {
      u.close();
    }
  });
  // A run may fail before its first wait (a record whose append throws at once), before the
  // pipeline has registered it with dedupe: it must still leave its ids free, never a failed
  // attempt that a retry would be "answered" from.
  for (const [what, phase, intent] of [
    ["a read whose one record", "complete", read({ n: 5 })],
    ["an effect whose intent record", "intent", { op: "t.write", target: "persona://alice/y", args: {} }],
  ] as const) {
    it(`${what} fails to append before any wait leaves its ids free: the retry runs, on the record`, async () => {
      const u = unit();
      try {
        const append = u.audit.appendRow.bind(u.audit);
        let failNext = true;
        u.audit.appendRow = (row, d) => {
          if (row.phase === phase && failNext) {
            failNext = false;
            throw new Error("audit append failed at once");
          }
          return append(row, d);
        };
        const req = request(intent);
        await assert.rejects(u.send(req), /audit append failed at once/);
        const retry = await u.send(req);
        assert.equal(retry.status, "SUCCESS");
        const phases = u
          .records()
          .filter((r) => r.requestId === req.id)
          .map((r) => r.phase);
        assert.deepEqual(phases, phase === "intent" ? ["intent", "outcome"] : ["complete"]);
        assert.equal(u.ran.length, phase === "intent" ? 1 : 2, "the retry ran again");
        // And a third attempt is dedupe's ordinary case: a replay of the effect, a read run again.
        const third = await u.send(req);
        assert.equal(third.status, "SUCCESS");
        assert.equal(u.ran.length, phase === "intent" ? 1 : 3);
      } finally {
        u.close();
      }
    });
  }
});

describe("an effect's answer, encoded once", () => {
  it("goes out as the bytes of its dedupe record (atomic or not), which are its canonical encoding", async () => {
    const ran: string[] = [];
    const u = unit({ families: [extra(ran)] });
    try {
      const put = request({ op: "p.put", target: "kernel://", args: { n: 7 } });
      const write = request({ op: "t.write", target: "persona://alice", args: {} });
      const readOnly = request({ op: "t.read", target: "kernel://", args: {} });
      for (const req of [put, write]) {
        const resp = await u.send(req);
        assert.equal(resp.status, "SUCCESS");
        const row = u.store.lookupDedupe(`alice:00:${req.id}`, Date.now());
        assert.ok(row, "the answer is recorded");
        assert.deepEqual(encodedBody(resp), Buffer.from(row.response), "sent as the recorded bytes");
        assert.deepEqual(Buffer.from(row.response), encodeCanonical(resp as never), "which are the answer's encoding");
        // A duplicate gets the same answer, from the first attempt's record.
        const again = await u.send(req);
        assert.deepEqual(again, resp);
      }
      assert.equal(encodedBody(await u.send(readOnly)), undefined, "a read-only answer is encoded once anyway, on the wire");
    } finally {
      u.close();
    }
  });
});

/**
 * Found by seed 586119915: two requests of one burst under one id, a read-only op that fails INTERNAL
 * (retryable: forgotten once its record commits) and another read. With a commit mid-turn, the
 * awaited run's second request found the first attempt ended and ran, and a later read of the
 * same id was refused as id reuse; in the synchronous run the reverse.
 */
const COMMITTED_MID_TURN: Step[] = [
  { intent: { op: "p.put", target: "kernel://", args: { n: 2 } }, caps: [DENY], reuse: null, together: false },
  { intent: { op: "t.read", target: "kernel://", args: { n: 1 } }, caps: [], reuse: 0, together: true },
  { intent: { op: "p.boom", target: "kernel://", args: {} }, caps: [ALLOW], reuse: 9, together: true },
  { intent: { op: "p.put", target: "kernel://", args: { n: 1 } }, caps: [ALLOW], reuse: null, together: true },
  { intent: { op: "t.read", target: "kernel://", args: { n: 1 } }, caps: [ALLOW], reuse: 8, together: true },
  { intent: { op: "p.put", target: "kernel://", args: { n: 0 } }, caps: [DENY], reuse: 18, together: false },
  { intent: { op: "t.read", target: "kernel://", args: { n: 2 } }, caps: [ALLOW], reuse: 18, together: false },
  { intent: { op: "p.put", target: "kernel://", args: { n: 0 } }, caps: [ALLOW], reuse: 4, together: false },
];

const byId = (x: [number, unknown], y: [number, unknown]) => x[0] - y[0];
