import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { suppressedHandshakesRecord, suppressedRefusalsRecord } from "../src/audit/suppressed-records.js";

// The aggregate records are hashed into the chain: their columns are what the tick wrote before
// their construction moved into audit/ (housekeeping and the pipeline only append them).

const since = Date.UTC(2026, 11, 3, 22, 0, 0);

describe("the audit.suppressed aggregate records", () => {
  it("a transport's suppressed handshakes: phase session, no session or persona, counts in a sorted detail", () => {
    const e = suppressedHandshakesRecord({
      transport: "grpc",
      count: 7,
      codes: { BAD_FRAME: 5, VERSION: 2 },
      peers: { "10.0.0.2:5000": 4, "10.0.0.1:4000": 3 },
      otherPeers: 0,
      since,
    });
    assert.deepEqual(e, {
      session: "-",
      persona: "-",
      phase: "session",
      op: "audit.suppressed",
      status: "FAILURE",
      message:
        "7 failed handshakes on grpc over the audit handshake rate, recorded as this one record (BAD_FRAME 5, VERSION 2) since 2026-12-03T22:00:00.000Z",
      detail:
        '{"codes":{"BAD_FRAME":5,"VERSION":2},"count":7,"of":"session.handshake","otherPeers":0,"peers":{"10.0.0.1:4000":3,"10.0.0.2:5000":4},"since":"2026-12-03T22:00:00.000Z","transport":"grpc"}',
    });
  });

  it("a session's suppressed refusals: phase refused, on the session and persona, what was tried in a sorted detail", () => {
    const e = suppressedRefusalsRecord({
      session: "s1",
      persona: "alice",
      count: 3,
      classes: { CAPABILITY: 3 },
      ops: { "storage.read": 2, "persona.register": 1 },
      otherOps: 0,
      targets: ["obj://a/x", "persona://b"],
      otherTargets: 0,
      since,
    });
    assert.deepEqual(e, {
      session: "s1",
      persona: "alice",
      phase: "refused",
      op: "audit.suppressed",
      status: "FAILURE",
      message:
        "3 refusals over the audit refusal rate, recorded as this one record (CAPABILITY 3) since 2026-12-03T22:00:00.000Z",
      detail:
        '{"classes":{"CAPABILITY":3},"count":3,"of":"refused","ops":{"persona.register":1,"storage.read":2},"since":"2026-12-03T22:00:00.000Z","targets":["obj://a/x","persona://b"]}',
    });
  });
});
