import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { removeHome, startKernel, until } from "./harness.js";

describe("metrics", () => {
  it("serves Prometheus series over HTTP when --metrics-listen is set", async () => {
    const t = await startKernel({ metricsListen: "127.0.0.1:0" });
    const c = await t.admin();
    await c.system.health();
    await c.storage.write("obj://ws1/m", "x");
    await c.call("storage.read", "obj://ws1/missing").catch(() => {});
    const res = await fetch(`http://${t.k.metricsAddress}/metrics`);
    assert.equal(res.status, 200);
    const text = await res.text();
    for (const series of [
      'kpip_requests_total{op="system.health",status="SUCCESS",error_class=""} 1',
      'kpip_requests_total{op="storage.read",status="FAILURE",error_class="SEMANTIC"} 1',
      'kpip_request_duration_seconds_bucket{le="3",op="storage.write"} 1',
      'kpip_request_duration_seconds_bucket{le="+Inf",op="storage.write"} 1',
      'kpip_request_duration_seconds_count{op="storage.write"} 1',
      "# TYPE kpip_request_duration_seconds histogram",
      "# TYPE kpip_requests_total counter",
      'kpip_sessions{transport="uds"}',
      "kpip_requests_in_flight",
      'kpip_deferred_ops{state="running"} 0',
      "kpip_audit_batch_records_count",
      "kpip_audit_commit_seconds_count",
      "kpip_event_queue_drops_total 0",
      'kpip_quota_usage{scope="workspace:ws1",resource="storage.bytes"} 1',
      'kpip_quota_usage{scope="persona:admin",resource="storage.bytes"} 1',
      "kpip_wal_background_checkpoints 1",
      "kpip_wal_topups_total 0",
      "kpip_wal_topup_seconds_total 0",
      "kpip_audit_anchor_failures_total 0",
    ]) {
      assert.ok(text.includes(series), `missing ${series}`);
    }
    assert.equal((await fetch(`http://${t.k.metricsAddress}/nope`)).status, 404);
    await t.stop();
    removeHome(t.home);
  });

  it("counts audit anchors that could not be written, and the kernel keeps serving", async () => {
    // Every write to /dev/full fails with ENOSPC.
    const t = await startKernel({ metricsListen: "127.0.0.1:0", auditAnchorFile: "/dev/full", auditCheckpointEvery: 2 });
    const c = await t.admin();
    for (let i = 0; i < 6; i++) await c.system.health();
    const failures = async () => {
      const text = await (await fetch(`http://${t.k.metricsAddress}/metrics`)).text();
      return Number(/kpip_audit_anchor_failures_total (\d+)/.exec(text)?.[1] ?? 0);
    };
    await until(async () => (await failures()) >= 2, 30_000, "anchor failures counted");
    assert.equal((await c.system.health()).status, "ok");
    await t.stop();
    removeHome(t.home);
  });

  it("is off by default", async () => {
    const t = await startKernel();
    assert.equal(t.k.metricsAddress, "");
    await t.stop();
    removeHome(t.home);
  });
});
