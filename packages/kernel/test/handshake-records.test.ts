import assert from "node:assert/strict";
import net from "node:net";
import { describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { generateIdentity } from "@kpip/protocol";
import { HandshakeRecordLimiter } from "../src/audit/handshake-limit.js";
import { adminIdentity, OWN_LOOPBACK_KEY, removeHome, startKernel, until } from "./harness.js";
import { allAudit, attestSignature, auditRecord, grpcGarbage, helloAs, RawPeer } from "./wire.js";

/** One connection that sends 16 garbage bytes and waits for the kernel to close it. */
function garbage(path: string): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.on("connect", () => s.write(Buffer.alloc(16, 0x41)));
    s.on("data", () => {});
    s.on("error", () => resolve());
    s.on("close", () => resolve());
  });
}

describe("failed handshakes' audit records are bounded (an unauthenticated peer cannot grow the chain at will)", () => {
  it("garbage on the Unix socket: records within auditHandshakeRate, the rest counted in audit.suppressed records (none unrecorded)", async () => {
    // Rate 1/s, burst 5: 300 failures take far less than the ~295 s that would let all of them through.
    const t = await startKernel({ auditHandshakeRate: 1 });
    try {
      const N = 300;
      for (let i = 0; i < N; i += 10) await Promise.all(Array.from({ length: 10 }, () => garbage(t.k.socketPath)));
      const tally = () => {
        const rows = allAudit(t.k);
        const single = rows.filter((r) => r.op === "session.handshake" && (r.message ?? "").startsWith("BAD_MAGIC:"));
        const agg = rows.filter((r) => r.op === "audit.suppressed" && r.phase === "session");
        const counted = agg.reduce((n, r) => n + (JSON.parse(r.detail ?? "{}").count as number), 0);
        return { single, agg, counted };
      };
      // Every failure is on the record: one by one within the rate, counted in an aggregate beyond it.
      const { single, agg } = await until(
        () => {
          const x = tally();
          return x.single.length + x.counted === N ? x : undefined;
        },
        30_000,
        "every failed handshake recorded or counted",
      );
      assert.ok(single.length < N / 4, `${single.length} single records for ${N} garbage connections`);
      assert.ok(agg.length >= 1);
      for (const r of agg) {
        const d = JSON.parse(r.detail ?? "{}");
        assert.deepEqual([r.persona, r.status, d.of, d.transport], ["-", "FAILURE", "session.handshake", "uds"]);
        assert.deepEqual(Object.keys(d.codes), ["BAD_MAGIC"]);
        assert.match(r.message ?? "", /failed handshakes on uds over the audit handshake rate/);
      }
      // The kernel keeps serving.
      const c = await t.admin();
      assert.equal((await c.system.health()).status, "ok");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("HandshakeRecordLimiter: per peer address and per transport, aggregates name codes and (a bounded number of) peers", () => {
    let now = 0;
    const l = new HandshakeRecordLimiter({ transportRate: 4, peerRate: 1 }, () => now);
    // One gRPC peer: its own burst (5), then counted, though the transport has room (20).
    let written = 0;
    for (let i = 0; i < 50; i++) if (l.admit("grpc", "10.0.0.1", "BAD_MAGIC")) written++;
    assert.equal(written, 5);
    // Other peers share the transport's remaining burst (15).
    for (let i = 0; i < 40; i++) if (l.admit("grpc", `10.0.1.${i}`, "ATTESTATION_FAILED")) written++;
    assert.equal(written, 20);
    // The Unix socket has its own transport bucket and no peer address.
    for (let i = 0; i < 30; i++) if (l.admit("uds", "", "BAD_MAGIC")) written++;
    assert.equal(written, 40);
    const [g, u] = l.take();
    assert.deepEqual([g?.transport, g?.count, g?.codes], ["grpc", 70, { BAD_MAGIC: 45, ATTESTATION_FAILED: 25 }]);
    assert.equal(g?.peers["10.0.0.1"], 45);
    assert.equal(Object.keys(g?.peers ?? {}).length, 16);
    assert.equal(g?.otherPeers, 25 - 15);
    assert.deepEqual([u?.transport, u?.count, u?.peers], ["uds", 10, {}]);
    assert.deepEqual(l.take(), [], "taken once");
    // A second later the buckets have refilled by the rate.
    now += 1000;
    assert.equal(l.admit("grpc", "10.0.0.1", "BAD_MAGIC"), true);
    assert.equal(l.admit("grpc", "10.0.0.1", "BAD_MAGIC"), false);
  });

  it("a failed ATTEST claiming the admin: the record's persona is '-', the claim is detail.claimedPersona, marked not verified", async () => {
    const t = await startKernel({});
    try {
      const impostor = generateIdentity("admin");
      const p = await RawPeer.connect(t.k.socketPath);
      const h = await helloAs(p, "admin", adminIdentity(t.k).publicKey);
      p.sendMessage({
        type: "ATTEST",
        body: { signature: attestSignature(impostor, h.helloBytes, h.challengeBytes), tokens: [] },
      });
      const row = await auditRecord(t.k, (r) => r.op === "session.handshake" && r.session === h.session);
      assert.equal(row.persona, "-", "nobody attested: the record names no persona");
      assert.equal(JSON.parse(row.detail ?? "{}").claimedPersona, "admin");
      assert.match(row.message ?? "", /^ATTESTATION_FAILED: .*\(persona "admin" claimed, not verified\)$/);
      // The admin's own records stay the admin's: nothing a stranger did is filed under it.
      assert.ok(!allAudit(t.k).some((r) => r.persona === "admin" && r.op === "session.handshake"));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("garbage gRPC streams from one address: records within auditHandshakePeerRate, the rest counted with the address (none unrecorded)", async () => {
    // The transport's rate is high: what bounds this peer is its own (1/s, burst 5).
    const t = await startKernel({ grpcListen: "127.0.0.1:0", auditHandshakeRate: 1000, auditHandshakePeerRate: 1 });
    const client = new grpc.Client(t.k.grpcAddress as string, grpc.credentials.createInsecure());
    try {
      const N = 120;
      for (let i = 0; i < N; i += 10) await Promise.all(Array.from({ length: 10 }, () => grpcGarbage(client)));
      const { single, agg } = await until(
        () => {
          const rows = allAudit(t.k);
          const single = rows.filter((r) => r.op === "session.handshake" && (r.message ?? "").startsWith("BAD_MAGIC:"));
          const agg = rows.filter((r) => r.op === "audit.suppressed" && r.phase === "session");
          const counted = agg.reduce((n, r) => n + (JSON.parse(r.detail ?? "{}").count as number), 0);
          return single.length + counted === N ? { single, agg } : undefined;
        },
        30_000,
        "every failed handshake recorded or counted",
      );
      assert.ok(single.length < N / 4, `${single.length} single records for ${N} garbage streams`);
      for (const r of agg) {
        const d = JSON.parse(r.detail ?? "{}");
        assert.equal(d.transport, "grpc");
        assert.deepEqual(Object.keys(d.peers), [OWN_LOOPBACK_KEY]);
        assert.equal(d.peers[OWN_LOOPBACK_KEY], d.count);
      }
    } finally {
      client.close();
      await t.stop();
      removeHome(t.home);
    }
  });
});
