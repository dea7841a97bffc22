import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { encodeIntent, encodeToken, type Grant, intentHash, type Request, type Response } from "@kpip/protocol";
import { pino } from "pino";
import { capabilities } from "../src/auth/capabilities.js";
import { RootKeys } from "../src/auth/keys.js";
import { verifyAudit } from "../src/index.js";
import { LATE_OUTCOME, recordLateRecords, StorageSpace } from "../src/kernel/storage-space.js";
import { createLogger } from "../src/log.js";
import { Admission } from "../src/pipeline/admission.js";
import { AFTER_COMMIT } from "../src/pipeline/pipeline.js";
import { tokenFamily } from "../src/primitives/token.js";
import type { PrimitiveFamily } from "../src/primitives/types.js";
import { PeerLogLimiter } from "../src/session/log-limit.js";
import { HASH_SLICE } from "../src/sliced-hash.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { AuditRow } from "../src/store/types.js";
import { until } from "./harness.js";
import { ALLOW, DENY, onlyRecord, read, request, unit } from "./pipeline-kit.js";

describe("the pipeline on its own (unit)", () => {
  it("refuses in stage order: admission, version, identity, intent, op, capability, permission, ownership", async () => {
    const u = unit();
    try {
      // Each request fails every check from its stage on; the first failing stage answers.
      const unknown = { op: "t.nope", target: "kernel://", args: {} };
      u.session.closing = true;
      const afterGoodbye = await u.send(request(new Uint8Array([0xff]), [], { version: 9 }));
      u.session.closing = false;
      const cases: [Response, string][] = [
        [afterGoodbye, "PROTOCOL"],
        [await u.send(request(new Uint8Array([0xff]), [], { version: 9, persona: "bob" })), "PROTOCOL"],
        [await u.send(request(new Uint8Array([0xff]), [], { persona: "bob" })), "AUTH"],
        [await u.send(request(new Uint8Array([0xff]), [])), "SEMANTIC"],
        [await u.send(request(unknown, [])), "SEMANTIC"],
        [await u.send(request(read(), [])), "CAPABILITY"],
        [await u.send(request(read(), [DENY])), "PERMISSION"],
        [await u.send(request({ op: "t.write", target: "persona://bob", args: {} })), "PERMISSION"],
      ];
      assert.deepEqual(
        cases.map(([r]) => r.error),
        cases.map(([, c]) => c),
      );
      assert.match(afterGoodbye.message ?? "", /closing/);
      assert.match(cases[4]?.[0].message ?? "", /unknown op t\.nope/, "an unknown op is SEMANTIC whatever the capabilities");
      assert.deepEqual(u.ran, [], "no handler ran");
    } finally {
      u.close();
    }
  });

  it("every refusal leaves exactly one 'refused' record with the request's columns, before its answer", async () => {
    const u = unit();
    try {
      const reqs = [
        request(new Uint8Array([0xff]), [], { persona: "bob" }),
        request(new Uint8Array([0xff])),
        request({ op: "t.nope", target: "kernel://", args: {} }),
        request(read(), []),
        request(read(), [DENY]),
        request(read({ n: 1 }), [ALLOW], { context: { persona: "alice", traceparent: "00-aa-bb-01", domain: "d1" } }),
      ];
      // The last one is fine: reuse its id for another intent (a dedupe conflict, refused SEMANTIC).
      const ok = await u.send(reqs[5] as Request);
      assert.equal(ok.status, "SUCCESS");
      const conflict = { ...(reqs[5] as Request), intent: encodeIntent(read({ n: 2 })) };
      for (const r of [...reqs.slice(0, 5), conflict]) {
        const answer = await u.send(r);
        assert.equal(answer.status, "FAILURE");
        // Answered only once its record is committed: the record is there when the answer is.
        const rows = u.records().filter((x) => x.requestId === r.id && x.phase === "refused");
        assert.equal(rows.length, 1, `request ${r.id}: one refused record`);
        const rec = rows[0] as AuditRow;
        assert.deepEqual([rec.status, rec.errorClass, rec.message], ["FAILURE", answer.error, answer.message]);
        assert.equal(rec.session, "s-1");
        assert.ok(rec.intentHash && rec.intentHash.length === 32, "the intent's hash, even of undecodable bytes");
      }
      const conflictRec = u.records().find((x) => x.requestId === conflict.id && x.phase === "refused") as AuditRow;
      assert.deepEqual(
        [conflictRec.op, conflictRec.caps, conflictRec.traceparent, conflictRec.domain],
        ["t.read", "h1:allow", "00-aa-bb-01", "d1"],
        "a refusal after authorization names the capability and the claimed context",
      );
    } finally {
      u.close();
    }
  });

  it("admission: over maxInFlight is RESOURCE, audited with its own message; the session's other requests run", async () => {
    const u = unit({ maxInFlight: 2 });
    try {
      u.session.inFlight = 2; // two requests already running: this one would be the third
      const refused = await u.send(request(read()));
      assert.deepEqual([refused.error, refused.message], ["RESOURCE", "more than 2 requests in flight on this session"]);
      assert.equal(onlyRecord(u, refused.id).message, "too many requests in flight");
      u.session.inFlight = 1;
      assert.equal((await u.send(request(read()))).status, "SUCCESS", "the second in flight is admitted");
      assert.equal(u.ran.length, 1);
    } finally {
      u.close();
    }
  });

  it("admission of sessions: maxSessions bounds them, the last adminReserve only for the admin", () => {
    const a = new Admission({ maxInFlight: 1, maxSessions: 4, adminReserve: 1, adminPersona: "admin" });
    assert.equal(a.session("alice", 2), undefined);
    assert.match(a.session("alice", 3)?.message ?? "", /3 sessions \(the last 1 of 4 are reserved for the admin\)/);
    assert.equal(a.session("admin", 3), undefined, "the admin takes the reserved slot");
    assert.equal(a.session("admin", 4)?.errorClass, "RESOURCE");
    // At most maxSessions - 1 reserved: some other persona can always get in.
    const small = new Admission({ maxInFlight: 1, maxSessions: 1, adminReserve: 4, adminPersona: "admin" });
    assert.equal(small.session("alice", 0), undefined);
  });

  it("a grant that lapses after the decision stops an op with effects before its handler runs (CAPABILITY, on the record); a read-only op still runs", async () => {
    // A revocation landing while the request waits for its intent record: modelled by an
    // authorizer whose grant lapses as soon as it has decided.
    let revoked = false;
    const grant: Grant = {
      id: "t-1",
      chain: [],
      subject: "alice",
      rights: [{ ops: ["**"], targets: ["**"] }],
      pairFilters: [],
      opFilters: [],
      targetFilters: [],
      limits: {},
      nbf: 0,
      exp: Date.now() + 60_000,
      maxExp: Date.now() + 60_000,
      workspaces: undefined,
      domains: undefined,
      usable: true,
    };
    const u = unit({
      authorizer: {
        authorize: () => {
          queueMicrotask(() => {
            revoked = true;
          });
          return { allowed: true, capIds: ["h1:t-1"], grant };
        },
        lapsed: (g, what) => (revoked && g === grant ? `the capability t-1 that authorized this ${what} was revoked` : undefined),
      },
    });
    try {
      const w = await u.send(request({ op: "t.write", target: "persona://alice", args: {} }));
      assert.equal(w.status, "FAILURE");
      assert.equal(w.error, "CAPABILITY");
      assert.match(w.message ?? "", /^the capability t-1 that authorized this request was revoked before it ran/);
      assert.deepEqual(u.ran, [], "the handler never ran");
      const r = await u.send(request(read()));
      assert.equal(r.status, "SUCCESS");
      await until(() => u.records().some((x) => x.op === "t.write" && x.errorClass === "CAPABILITY") || undefined);
    } finally {
      u.close();
    }
  });

  it("ownership is decided before the handler: PERMISSION after the intent record, the handler never runs", async () => {
    const u = unit();
    try {
      const mine = await u.send(request({ op: "t.write", target: "persona://alice", args: {} }));
      assert.equal(mine.status, "SUCCESS");
      const theirs = await u.send(request({ op: "t.write", target: "persona://bob", args: {} }));
      assert.deepEqual([theirs.error, theirs.message], ["PERMISSION", "persona://bob is not the caller's"]);
      assert.deepEqual(u.ran, [`write:${mine.id}`]);
      const phases = u
        .records()
        .filter((r) => r.requestId === theirs.id)
        .map((r) => [r.phase, r.errorClass]);
      assert.deepEqual(phases, [
        ["intent", null],
        ["outcome", "PERMISSION"],
      ]);
      // The workspace rule is the pipeline's own: an obj:// target outside the request's workspace.
      const ws = await u.send(
        request({ op: "t.read", target: "obj://ws2/x", args: {} }, [ALLOW], { context: { persona: "alice", workspace: "ws1" } }),
      );
      assert.deepEqual([ws.error, ws.message], ["PERMISSION", "the request's workspace ws1 does not contain obj://ws2/x"]);
      assert.equal(u.ran.length, 1);
    } finally {
      u.close();
    }
  });

  it("a handler's own failure keeps its class; read-only ops leave one 'complete' record", async () => {
    const u = unit();
    try {
      const f = await u.send(request({ op: "t.fail", target: "kernel://", args: {} }));
      assert.deepEqual([f.error, f.message], ["RESOURCE", "the op's own failure"]);
      const rec = onlyRecord(u, f.id);
      assert.deepEqual([rec.phase, rec.errorClass], ["complete", "RESOURCE"]);
    } finally {
      u.close();
    }
  });

  it("work that fails after an effect committed is logged, never the answer: the answer and the outcome record are the committed SUCCESS", async () => {
    for (const asyncStages of [false, true]) {
      const logged: string[] = [];
      const peerLog = new PeerLogLimiter(
        pino({ level: "info" }, { write: (s: string) => logged.push(JSON.parse(s).msg as string) }),
        { lines: 100, windowMs: 60_000 },
      );
      const committedThenFails: PrimitiveFamily = {
        name: "c",
        ops: [
          {
            op: "c.commit",
            description: "an effect that commits, then a clean-up (and the record's note) that throws",
            targets: ["persona"],
            args: {},
            idempotent: false,
            effects: true,
            handler: (ctx) => {
              ctx.atomically(() => ({
                status: "SUCCESS" as const,
                payload: { done: true },
                revoked: ["t1"],
              }));
              throw new Error("the clean-up failed");
            },
          },
          {
            op: "c.rollback",
            description: "an effect that throws inside its transaction: nothing committed",
            targets: ["persona"],
            args: {},
            idempotent: false,
            effects: true,
            handler: (ctx) =>
              ctx.atomically(() => {
                throw new Error("the effect failed");
              }),
          },
        ],
      };
      const u = unit({
        families: [committedThenFails],
        peerLog,
        asyncStages,
        revocationRecorded: () => {
          throw new Error("the note of the record failed");
        },
      });
      try {
        const req = request({ op: "c.commit", target: "persona://alice", args: {} });
        const r = await u.send(req);
        assert.deepEqual([r.status, r.error, r.payload], ["SUCCESS", undefined, { done: true }], `async: ${asyncStages}`);
        const outcome = u.records().find((x) => x.requestId === req.id && x.phase === "outcome");
        assert.equal(outcome?.status, "SUCCESS");
        // Both failures logged; the retry gets the same answer from the record.
        assert.equal(logged.filter((m) => /after a committed effect/.test(m)).length, 2, logged.join("; "));
        const again = await u.send(req);
        assert.deepEqual([again.status, again.payload], ["SUCCESS", { done: true }]);
        // Nothing committed: the failure is the answer, as before.
        const rolled = await u.send(request({ op: "c.rollback", target: "persona://alice", args: {} }));
        assert.equal(rolled.error, "INTERNAL");
      } finally {
        u.close();
      }
    }
  });

  it("a request refused by its grant's limits, its refusal record suppressed, is not remembered: its retry runs once the slot is free", async () => {
    // One request in flight at a time for the grant; one refusal record, then counted only.
    const grant = {
      id: "tok-1",
      chain: [],
      subject: "alice",
      rights: [],
      pairFilters: [],
      opFilters: [],
      targetFilters: [],
      limits: { concurrent: 1 },
      nbf: 0,
      exp: 2e12,
      maxExp: 2e12,
      usable: true,
    } as unknown as Grant;
    const authorizer = { authorize: () => ({ allowed: true as const, capIds: ["tok-1"], grant, rateKey: "tok-1" }) };
    let open: () => void = () => {};
    const gate = new Promise<void>((r) => {
      open = r;
    });
    const held: PrimitiveFamily = {
      name: "g",
      ops: [
        {
          op: "g.hold",
          description: "holds the grant's one slot until the test opens the gate",
          targets: ["kernel"],
          args: {},
          idempotent: true,
          effects: false,
          handler: async () => {
            await gate;
            return { status: "SUCCESS" };
          },
        },
      ],
    };
    const u = unit({ authorizer, refusalRate: 0.2, families: [held] });
    try {
      const holding = u.send(request({ op: "g.hold", target: "kernel://", args: {} }));
      const b = request(read({ n: 2 }));
      const c = request(read({ n: 3 }));
      assert.equal((await u.send(b)).error, "RESOURCE", "over the concurrent limit (its record written)");
      assert.equal((await u.send(c)).error, "RESOURCE", "over the concurrent limit (its record suppressed)");
      open();
      assert.equal((await holding).status, "SUCCESS");
      // RESOURCE is transient: the same ids run again rather than replaying the refusal from dedupe.
      for (const retry of [c, b]) {
        const r = await u.send({ ...retry });
        assert.equal(r.status, "SUCCESS", `retry of ${retry.id}: ${r.error} ${r.message}`);
      }
      assert.ok(!u.records().some((r) => r.phase === "replay"), "nothing answered from a record");
    } finally {
      u.close();
    }
  });

  it("over the refusal rate a refusal is counted, not written; flushSuppressed writes one aggregate record", async () => {
    const u = unit({ refusalRate: 1 });
    try {
      const answers: Response[] = [];
      for (let i = 0; i < 12; i++) answers.push(await u.send(request(read(), [])));
      assert.ok(
        answers.every((a) => a.error === "CAPABILITY"),
        "every refusal is answered",
      );
      const written = u.records().filter((r) => r.phase === "refused" && r.op === "t.read").length;
      assert.ok(written >= 1 && written < 12, `some written one by one (${written}), the rest counted`);
      u.pipeline.flushSuppressed();
      const agg = await until(() => u.records().find((r) => r.op === "audit.suppressed"), 10_000, "the aggregate record");
      assert.match(agg.message ?? "", new RegExp(`^${12 - written} refusals`));
    } finally {
      u.close();
    }
  });

  it("an early refusal over the refusal rate is counted without its intent hashed: only the refusals that get a record hash theirs", async () => {
    const u = unit({ refusalRate: 1 });
    // Every SHA-256 fed through a Hash object (the sliced hash of a large intent), in bytes.
    const proto = Object.getPrototypeOf(createHash("sha256")) as { update: (...a: unknown[]) => unknown };
    const update = proto.update;
    let hashed = 0;
    proto.update = function (this: unknown, data: unknown, ...rest: unknown[]) {
      if (data instanceof Uint8Array && data.length >= 1024 * 1024) hashed += data.length;
      return update.call(this, data, ...rest);
    };
    try {
      // Refused at step 2 (another persona's name), a large intent each: 12 over a burst of 5.
      const big = new Uint8Array(HASH_SLICE + 1024 * 1024).fill(7);
      const sent: Request[] = [];
      for (let i = 0; i < 12; i++) sent.push(request(big, [], { persona: "bob" }));
      const answers: Response[] = [];
      for (const r of sent) answers.push(await u.send(r));
      proto.update = update;
      assert.ok(
        answers.every((a) => a.error === "AUTH"),
        "every refusal is answered",
      );
      const written = u.records().filter((r) => r.phase === "refused" && sent.some((q) => q.id === r.requestId));
      assert.ok(written.length >= 1 && written.length < 12, `some written one by one (${written.length}), the rest counted`);
      for (const r of written) assert.deepEqual(Buffer.from(r.intentHash as Uint8Array), Buffer.from(intentHash(big)));
      assert.equal(hashed, written.length * big.length, "only the intents of the written refusals were hashed");
      u.pipeline.flushSuppressed();
      const agg = await until(() => u.records().find((r) => r.op === "audit.suppressed"), 10_000, "the aggregate record");
      assert.match(agg.message ?? "", new RegExp(`^${12 - written.length} refusals`), "and every other one counted");
    } finally {
      proto.update = update;
      u.close();
    }
  });

  it("hashes a large intent a slice per turn: other sessions are served meanwhile, and its session's later requests keep their order", async () => {
    const order: string[] = [];
    const op = (name: string, args: PrimitiveFamily["ops"][number]["args"]): PrimitiveFamily["ops"][number] => ({
      op: name,
      description: name,
      targets: ["kernel"],
      args,
      idempotent: true,
      effects: false,
      handler: (ctx) => {
        order.push(`${name}:${ctx.requestId}`);
        return { status: "SUCCESS" };
      },
    });
    const u = unit({
      families: [
        { name: "b", ops: [op("b.big", { data: { type: "bytes", required: true, description: "a body" } }), op("b.small", {})] },
      ],
    });
    try {
      const big = request({ op: "b.big", target: "kernel://", args: { data: new Uint8Array(2 * HASH_SLICE + 1) } });
      const mine = request({ op: "b.small", target: "kernel://", args: {} });
      const theirs = request({ op: "b.small", target: "kernel://", args: {} });
      const otherSession = { ...u.session, id: "s-2", instance: "01", inFlight: 1 };
      const answers = await Promise.all([u.send(big), u.send(mine), u.pipeline.handle(otherSession, theirs)]);
      assert.deepEqual(
        answers.map((a) => a.status),
        ["SUCCESS", "SUCCESS", "SUCCESS"],
      );
      // Hashed at once, the big intent held everyone: its handler ran first. Now the other
      // session's request runs while it is hashed, and this session's next request waits for it.
      assert.deepEqual(order, [`b.small:${theirs.id}`, `b.big:${big.id}`, `b.small:${mine.id}`]);
      assert.deepEqual(onlyRecord(u, big.id).intentHash, intentHash(big.intent), "the record has the whole intent's hash");
    } finally {
      u.close();
    }
  });

  it("hashes a large intent refused at admission a slice per turn too: other sessions are served meanwhile", async () => {
    const u = unit();
    try {
      const big = request({ op: "t.read", target: "kernel://", args: { n: 1 } });
      big.intent = Buffer.concat([big.intent, Buffer.alloc(2 * HASH_SLICE + 1)]); // refused before decoding anyway
      u.session.closing = true; // after GOODBYE: refused by admission, before step 3
      const theirs = request(read({ n: 2 }));
      const otherSession = { ...u.session, id: "s-2", instance: "01", inFlight: 1, closing: false };
      const [refused, served] = await Promise.all([u.send(big), u.pipeline.handle(otherSession, theirs)]);
      assert.equal(refused.error, "PROTOCOL");
      assert.equal(served.status, "SUCCESS");
      const seqOf = (id: number) => onlyRecord(u, id).seq;
      assert.ok(seqOf(theirs.id) < seqOf(big.id), "the other session's request was recorded while the refused one was hashed");
      assert.deepEqual(
        onlyRecord(u, big.id).intentHash,
        intentHash(big.intent),
        "the refusal's record has the whole intent's hash",
      );
    } finally {
      u.close();
    }
  });

  it("a handler that throws after its effect committed: the answer and the outcome record are the committed answer's, as the retry's are", async () => {
    const done: PrimitiveFamily = {
      name: "q",
      ops: [
        {
          op: "q.put",
          description: "an effect, then a bug",
          targets: ["kernel"],
          args: {},
          idempotent: false,
          effects: true,
          handler: (ctx) => {
            ctx.atomically(() => ({ status: "SUCCESS", payload: { done: true }, audit: { thing: "made" } }));
            throw new Error("a bug after the commit");
          },
        },
      ],
    };
    const u = unit({ families: [done] });
    try {
      const req = request({ op: "q.put", target: "kernel://", args: {} });
      const first = await u.send(req);
      const retry = await u.send({ ...req });
      assert.deepEqual([first.status, first.error], ["SUCCESS", undefined], "the effect happened: not FAILURE INTERNAL");
      assert.deepEqual(retry.payload, first.payload);
      const rows = u.records().filter((r) => r.requestId === req.id);
      assert.deepEqual(
        rows.map((r) => [r.phase, r.status, r.errorClass]),
        [
          ["intent", null, null],
          ["outcome", "SUCCESS", null],
          ["replay", "SUCCESS", null],
        ],
      );
      const outcome = rows[1] as AuditRow;
      assert.equal(outcome.message, `${AFTER_COMMIT}q.put failed inside the kernel`);
      assert.deepEqual(JSON.parse(outcome.detail ?? "{}"), { status: "SUCCESS", thing: "made" });
    } finally {
      u.close();
    }
  });
});

describe("an effect whose outcome record finds no room (unit)", () => {
  it("its outcome record is kept and written once there is room, marked late: no effect stays off the record; the retry gets the committed answer", async () => {
    const space = new StorageSpace(createLogger("silent", false));
    const put: PrimitiveFamily = {
      name: "q",
      ops: [
        {
          op: "q.put",
          description: "an effect committed with its answer",
          targets: ["kernel"],
          args: {},
          idempotent: false,
          effects: true,
          handler: (ctx) => ctx.atomically(() => ({ status: "SUCCESS", payload: { done: true }, audit: { thing: "made" } })),
        },
      ],
    };
    const u = unit({ families: [put], space });
    try {
      // The disk fills between the effect's commit and its outcome record's.
      const append = u.audit.appendRow.bind(u.audit);
      let refuse = true;
      u.audit.appendRow = (row, dedupe) => {
        if (refuse && row.phase === "outcome") {
          refuse = false;
          return Promise.reject(
            Object.assign(new Error("audit commit failed: ENOSPC: no space left on device, write"), {
              cause: Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }),
            }),
          );
        }
        return append(row, dedupe);
      };
      const req = request({ op: "q.put", target: "kernel://", args: {} });
      await assert.rejects(u.send(req), /ENOSPC/);
      const phases = () =>
        u
          .records()
          .filter((r) => r.requestId === req.id)
          .map((r) => [r.phase, r.status, r.message]);
      assert.deepEqual(phases(), [["intent", null, null]], "the outcome is not on the record yet");
      assert.equal(space.outcomesMissing, true);
      // Room again (the kernel's probe record committed): the kept record goes on the chain.
      await recordLateRecords(space, u.audit);
      assert.equal(space.outcomesMissing, false);
      assert.deepEqual(phases(), [
        ["intent", null, null],
        ["outcome", "SUCCESS", LATE_OUTCOME],
      ]);
      const retry = await u.send({ ...req });
      assert.deepEqual([retry.status, retry.payload], ["SUCCESS", { done: true }], "answered from the committed answer");
      assert.ok(verifyAudit(u.store).ok);
    } finally {
      u.close();
    }
  });
});

describe("PERMISSION in one place, with the capability enforcer (unit)", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-pipeline-unit-"));
  after(() => rmSync(home, { recursive: true, force: true }));

  it("a token inspects itself without a pattern for it (impliedBy); a token://** grant does not reach another persona's token (owns)", async () => {
    const store = new SqliteStore(":memory:");
    const caps = capabilities(new RootKeys(home), store);
    const u = unit({ authorizer: caps.enforcer, families: [tokenFamily(caps.enforcer, caps.tokens, store)] });
    try {
      const narrow = caps.tokens.mint(undefined, "admin", {
        sub: "alice",
        rights: [{ ops: ["t.read"], targets: ["kernel://"] }],
        ttlMs: 60_000,
      });
      const wide = caps.tokens.mint(undefined, "admin", {
        sub: "alice",
        rights: [{ ops: ["token.*"], targets: ["token://**"] }],
        ttlMs: 60_000,
      });
      const bobs = caps.tokens.mint(undefined, "admin", {
        sub: "bob",
        rights: [{ ops: ["t.read"], targets: ["kernel://"] }],
        ttlMs: 60_000,
      });
      const inspect = (t: typeof narrow, cap: typeof narrow) =>
        u.send(
          request({ op: "token.inspect", target: `token://${t.claims.id}`, args: { token: encodeToken(t) } }, [encodeToken(cap)]),
        );
      assert.equal((await inspect(narrow, narrow)).status, "SUCCESS", "a token over itself");
      assert.equal((await inspect(wide, narrow)).error, "PERMISSION", "not over another token, without a grant");
      const other = await inspect(bobs, wide);
      assert.deepEqual([other.error, other.message], ["PERMISSION", `token ${bobs.claims.id} belongs to another persona`]);
      const rows = u.records().filter((r) => r.requestId === other.id);
      assert.deepEqual(
        rows.map((r) => [r.phase, r.errorClass]),
        [["complete", "PERMISSION"]],
        "authorized by the grant, refused by the op's ownership rule",
      );
    } finally {
      u.close();
      store.close();
    }
  });
});
