import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { HandshakeRecordLimiter } from "../src/audit/handshake-limit.js";
import { RateBuckets } from "../src/audit/rate-buckets.js";
import { overflowKey, peerKey } from "../src/session/peer-key.js";
import { OWN_LOOPBACK_KEY, removeHome, startKernel, until } from "./harness.js";
import { allAudit, grpcGarbage } from "./wire.js";

const group = fc.integer({ min: 0, max: 0xffff });
const groups = (n: number) => fc.array(group, { minLength: n, maxLength: n });
const octet = fc.integer({ min: 0, max: 255 });
const ipv4 = fc.tuple(octet, octet, octet, octet).map((o) => o.join("."));

/** One address written three ways: every group padded (upper case), unpadded, and RFC 5952 short (as a URL host). */
function spellings(g: number[]): string[] {
  const padded = g.map((x) => x.toString(16).padStart(4, "0").toUpperCase()).join(":");
  const plain = g.map((x) => x.toString(16)).join(":");
  const short = new URL(`http://[${plain}]/`).hostname.slice(1, -1);
  return [padded, plain, short];
}

/** Both listeners below need IPv6 on the loopback interface (a host without it skips them). */
const noIPv6 = Object.values(networkInterfaces())
  .flat()
  .some((i) => i?.address === "::1")
  ? false
  : "no IPv6 loopback (::1) on this host";

const tls = (f: string) => fileURLToPath(new URL(`../../test/fixtures/tls/${f}`, import.meta.url));

/** Waits until every failed handshake of `n` is on the record, one by one or counted; returns the aggregates' details. */
function handshakeAggregates(t: Awaited<ReturnType<typeof startKernel>>, n: number) {
  return until(
    () => {
      const rows = allAudit(t.k);
      const single = rows.filter((r) => r.op === "session.handshake" && (r.message ?? "").startsWith("BAD_MAGIC:"));
      const agg = rows.filter((r) => r.op === "audit.suppressed" && r.phase === "session");
      const details = agg.map((r) => JSON.parse(r.detail ?? "{}") as { count: number; peers: Record<string, number> });
      return single.length + details.reduce((k, d) => k + d.count, 0) === n ? details : undefined;
    },
    30_000,
    "every failed handshake recorded or counted",
  );
}

describe("peer keys: an IPv6 peer is counted by its /64, an IPv4-mapped one as its IPv4 address", () => {
  it("peerKey: every address of one /64, however written, is one key; other /64s are other keys; mapped IPv4 is the IPv4 address", () => {
    fc.assert(
      fc.property(groups(4), groups(4), groups(4), (prefix, host1, host2) => {
        fc.pre(prefix.some((x) => x !== 0)); // not ::/64, where ::ffff:a.b.c.d lies (below)
        const keys = new Set([...spellings([...prefix, ...host1]), ...spellings([...prefix, ...host2])].map(peerKey));
        assert.deepEqual([...keys], [`${spellings([...prefix, 0, 0, 0, 0])[2]}/64`]);
      }),
    );
    fc.assert(
      fc.property(groups(4), groups(4), groups(4), (p1, p2, host) => {
        fc.pre(p1.some((x, i) => x !== p2[i]));
        fc.pre(p1.some((x) => x !== 0) && p2.some((x) => x !== 0));
        assert.notEqual(peerKey(spellings([...p1, ...host])[2] as string), peerKey(spellings([...p2, ...host])[2] as string));
      }),
    );
    fc.assert(
      fc.property(ipv4, (v4) => {
        const [a, b, c, d] = v4.split(".").map(Number) as [number, number, number, number];
        const hex = `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
        // Every loopback address (127.0.0.0/8) is one peer, "loopback".
        const key = a === 127 ? "loopback" : v4;
        for (const mapped of [`::ffff:${v4}`, `::FFFF:${v4}`, `0:0:0:0:0:ffff:${v4}`, `::ffff:${hex}`])
          assert.equal(peerKey(mapped), key, mapped);
        assert.equal(peerKey(v4), key);
      }),
    );
    // A link-local zone names the kernel's interface, not the peer; no address at all stays none.
    assert.equal(peerKey("fe80::1%eth0"), peerKey("fe80::2"));
    // Every loopback address is one peer: any local user can bind any 127.x.y.z.
    for (const a of ["::1", "127.0.0.1", "127.0.0.2", "127.5.6.7", "::ffff:127.0.0.9", "0:0:0:0:0:0:0:1"]) {
      assert.equal(peerKey(a), "loopback", a);
    }
    assert.equal(peerKey("::2"), "::/64");
    assert.equal(peerKey("128.0.0.1"), "128.0.0.1");
    assert.equal(peerKey("2001:db8:0:0:1::2"), "2001:db8::/64");
    assert.equal(peerKey(""), "");
  });

  it("overflowKey: past a table's room, an IPv4 peer shares its /24's bucket and an IPv6 peer its /48's, not everyone's; RateBuckets.peek makes no bucket", () => {
    assert.equal(overflowKey("203.0.113.7"), "203.0.113.0/24");
    assert.equal(overflowKey("::ffff:203.0.113.7"), "203.0.113.0/24");
    assert.equal(overflowKey("2001:db8:1:2:3:4:5:6"), "2001:db8:1::/48");
    assert.equal(overflowKey("2001:db8:1:ffff::9"), "2001:db8:1::/48");
    assert.notEqual(overflowKey("2001:db8:2::1"), overflowKey("2001:db8:1::1"));
    assert.equal(overflowKey("127.0.0.1"), peerKey("127.0.0.1"));
    const b = new RateBuckets(() => 1);
    assert.equal(b.peek("x", 0), undefined);
    assert.equal(b.full, false);
    b.take("x", 0).tokens -= 5;
    assert.equal(b.peek("x", 0)?.tokens, 0);
  });

  it("HandshakeRecordLimiter under peer keys: 20,000 rotating addresses of one /64 get one peer's burst and one named key, and leave the table room", () => {
    const now = 0;
    const l = new HandshakeRecordLimiter({ transportRate: 1000, peerRate: 1 }, () => now);
    let written = 0;
    for (let i = 0; i < 20_000; i++) {
      const address = `2001:db8:7:7:${[i >> 16, i & 0xffff, (i * 7) & 0xffff, 1].map((x) => x.toString(16)).join(":")}`;
      if (l.admit("grpc", peerKey(address), "BAD_MAGIC")) written++;
    }
    assert.equal(written, 5, "one peer's burst (5 × 1/s), not one burst per address");
    // A peer elsewhere still has its own bucket: the rotation did not fill the table.
    assert.equal(l.admit("grpc", peerKey("2001:db8:8::1"), "BAD_MAGIC"), true);
    assert.equal(l.admit("grpc", peerKey("::ffff:10.0.0.1"), "BAD_MAGIC"), true);
    const [g] = l.take();
    assert.deepEqual(g?.peers, { "2001:db8:7:7::/64": 19_995 });
    assert.equal(g?.otherPeers, 0);
  });

  it("garbage gRPC streams over IPv6: the kernel counts the peer by its /64 (the aggregate names the prefix, not the address)", {
    skip: noIPv6,
  }, async () => {
    const t = await startKernel({ grpcListen: "[::1]:0", auditHandshakeRate: 1000, auditHandshakePeerRate: 1 });
    const client = new grpc.Client(t.k.grpcAddress as string, grpc.credentials.createInsecure());
    try {
      const N = 40;
      for (let i = 0; i < N; i += 10) await Promise.all(Array.from({ length: 10 }, () => grpcGarbage(client)));
      const agg = await handshakeAggregates(t, N);
      assert.ok(agg.length >= 1);
      for (const d of agg) assert.deepEqual(Object.keys(d.peers), [OWN_LOOPBACK_KEY]);
      // The session's own record still says where it came from, address and port.
      const one = allAudit(t.k).find((r) => r.op === "session.handshake");
      assert.match(JSON.parse(one?.detail ?? "{}").peer ?? "", /^\[?::1\]?:\d+$/);
    } finally {
      client.close();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("garbage gRPC streams from IPv4 to a dual-stack listener: the peer (::ffff:127.0.0.1) is counted as loopback, like 127.0.0.1", {
    skip: noIPv6,
  }, async () => {
    const t = await startKernel({
      grpcListen: "[::]:0",
      grpcTlsCert: tls("server.pem"),
      grpcTlsKey: tls("server.key"),
      auditHandshakeRate: 1000,
      auditHandshakePeerRate: 1,
    });
    const port = (t.k.grpcAddress as string).slice((t.k.grpcAddress as string).lastIndexOf(":") + 1);
    const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(readFileSync(tls("ca.pem"))));
    try {
      const N = 40;
      for (let i = 0; i < N; i += 10) await Promise.all(Array.from({ length: 10 }, () => grpcGarbage(client)));
      const agg = await handshakeAggregates(t, N);
      assert.ok(agg.length >= 1);
      for (const d of agg) assert.deepEqual(Object.keys(d.peers), [OWN_LOOPBACK_KEY]);
    } finally {
      client.close();
      await t.stop();
      removeHome(t.home);
    }
  });
});
