import assert from "node:assert/strict";
import { mkdtempSync, openSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { AnchorFile } from "../src/audit/anchors.js";
import { ConfigError, Kernel, verifyAudit } from "../src/index.js";
import { removeHome, sandboxSkip, startKernel, until } from "./harness.js";

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
      // An object's body, its path's bytes and its row (OBJECT_ROW_BYTES): 1 + 1 + 512.
      'kpip_quota_usage{scope="workspace",resource="storage.bytes"} 514',
      'kpip_quota_usage{scope="persona",resource="storage.bytes"} 514',
      "kpip_wal_background_checkpoints 1",
      "kpip_storage_failed 0",
      "kpip_shm_bytes 0",
      "kpip_wal_topups_total 0",
      "kpip_wal_topup_seconds_total 0",
      "kpip_audit_anchor_failures_total 0",
      "kpip_audit_index_failures_total 0",
      "# TYPE kpip_audit_unindexed_records gauge",
    ]) {
      assert.ok(text.includes(series), `missing ${series}`);
    }
    assert.equal((await fetch(`http://${t.k.metricsAddress}/nope`)).status, 404);
    await t.stop();
    removeHome(t.home);
  });

  it("counts audit batches SQLite could not index; the kernel keeps answering, and indexes them once it can", async () => {
    const t = await startKernel({ metricsListen: "127.0.0.1:0" });
    const c = await t.admin();
    await c.system.health();
    const series = async (name: string) => {
      const text = await (await fetch(`http://${t.k.metricsAddress}/metrics`)).text();
      return Number(new RegExp(`^${name} (\\d+)`, "m").exec(text)?.[1] ?? Number.NaN);
    };
    // Another connection makes every index of a span fail (the records are in the segment meanwhile).
    const other = new Database(join(t.home, "kernel.db"));
    other.exec("CREATE TRIGGER block_index BEFORE INSERT ON audit_batches BEGIN SELECT RAISE(ABORT, 'blocked'); END");
    for (let i = 0; i < 5; i++) assert.equal((await c.system.health()).status, "ok");
    await until(async () => (await series("kpip_audit_index_failures_total")) >= 1, 30_000, "an index failure counted");
    assert.ok((await series("kpip_audit_unindexed_records")) >= 1);
    assert.equal((await c.system.health()).status, "ok", "answered from the journal meanwhile");
    other.exec("DROP TRIGGER block_index");
    other.close();
    await c.system.health();
    await until(async () => (await series("kpip_audit_unindexed_records")) === 0, 30_000, "the batches indexed");
    assert.equal(verifyAudit(t.k.inspect).ok, true);
    await t.stop();
    removeHome(t.home);
  });

  it("counts audit anchors that could not be written, and the kernel keeps serving", async () => {
    // The anchor file is a regular file (the kernel refuses any other); its appends go to /dev/full,
    // where every write fails with ENOSPC, as on a full disk.
    const dir = mkdtempSync(join(tmpdir(), "kpip-anchors-"));
    const full = openSync("/dev/full", "w");
    const append = AnchorFile.prototype.append;
    AnchorFile.prototype.append = function (this: AnchorFile, cp) {
      (this as unknown as { fd: number }).fd = full;
      append.call(this, cp);
    };
    try {
      const t = await startKernel({
        metricsListen: "127.0.0.1:0",
        auditAnchorFile: join(dir, "anchors"),
        auditCheckpointEvery: 2,
      });
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
    } finally {
      AnchorFile.prototype.append = append;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a local peer holding a request to /metrics open (headers never finished, or a body never sent whole) does not hold the kernel's stop: the stop ends its connection and completes", {
    timeout: 120_000,
  }, async () => {
    const t = await startKernel({ metricsListen: "127.0.0.1:0" });
    const [host, port] = [t.k.metricsAddress.split(":")[0] as string, Number(t.k.metricsAddress.split(":")[1])];
    const peer = async (request: string) => {
      const sock = connect(port, host);
      const closed = new Promise<void>((r) => sock.on("close", () => r()));
      sock.on("error", () => {});
      let answered = "";
      sock.on("data", (d) => {
        answered += d.toString();
      });
      await new Promise<void>((r) => sock.on("connect", () => r()));
      sock.write(request);
      return { closed, answered: () => answered };
    };
    // No timeout cuts either once the server closes (it stops the timers that would): only the stop can.
    const headers = await peer("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n");
    const body = await peer("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\nx");
    // Answered, its body still being read: the connection is not idle.
    await until(() => body.answered().startsWith("HTTP/1.1 200"), 30_000, "the POST answered");
    await t.stop();
    await Promise.all([headers.closed, body.closed]);
    assert.equal(headers.answered(), "");
    removeHome(t.home);
  });

  it("is off by default", async () => {
    const t = await startKernel();
    assert.equal(t.k.metricsAddress, "");
    await t.stop();
    removeHome(t.home);
  });

  it("/metrics names no persona or workspace by default (usage summed per kind); ids only with metricsPersonaLabels 1", async () => {
    const usage = async (o: { metricsPersonaLabels?: number }) => {
      const t = await startKernel({ metricsListen: "127.0.0.1:0", ...o });
      try {
        const bob = await t.persona("bob-secret-project", [{ ops: ["storage.write"], targets: ["obj://bobws/**"] }]);
        const b = await t.connect(bob.identity, [bob.token]);
        await b.storage.write("obj://bobws/plans", "x".repeat(100));
        await (await t.admin()).storage.write("obj://adminws/a", "y".repeat(20));
        const text = await (await fetch(`http://${t.k.metricsAddress}/metrics`)).text();
        return text.split("\n").filter((l) => l.startsWith("kpip_quota_usage{"));
      } finally {
        await t.stop();
        removeHome(t.home);
      }
    };
    const plain = await usage({});
    // Each object's body, its path's bytes and its row (512): bob's 100 + 5 + 512, the admin's 20 + 1 + 512.
    assert.ok(plain.includes('kpip_quota_usage{scope="persona",resource="storage.bytes"} 1150'), plain.join("\n"));
    assert.ok(plain.includes('kpip_quota_usage{scope="workspace",resource="storage.bytes"} 1150'), plain.join("\n"));
    assert.ok(!plain.some((l) => /bob|admin|ws/.test(l)), `no ids: ${plain.join("\n")}`);
    const labelled = await usage({ metricsPersonaLabels: 1 });
    assert.ok(labelled.includes('kpip_quota_usage{scope="persona:bob-secret-project",resource="storage.bytes"} 617'));
    assert.ok(labelled.includes('kpip_quota_usage{scope="workspace:bobws",resource="storage.bytes"} 617'));
  });

  it("/metrics names no resource a persona chose by default (named resources summed as one); names only with metricsPersonaLabels 1", async () => {
    const usage = async (o: { metricsPersonaLabels?: number }) => {
      const t = await startKernel({ metricsListen: "127.0.0.1:0", ...o });
      try {
        // A resource's name is the allocating persona's text, as its id is: a project's name, or
        // data spelled out by a persona that may write nowhere else, read by anyone reaching /metrics.
        const bob = await t.persona("bob", [{ ops: ["resource.*"], targets: ["persona://bob"] }]);
        const b = await t.connect(bob.identity, [bob.token]);
        await b.resources.alloc("bob", "gpu.project_phoenix", 7);
        await b.resources.alloc("bob", "leak.s3cr3t_2f9a", 3);
        const text = await (await fetch(`http://${t.k.metricsAddress}/metrics`)).text();
        return text.split("\n").filter((l) => l.startsWith("kpip_quota_usage{"));
      } finally {
        await t.stop();
        removeHome(t.home);
      }
    };
    const plain = await usage({});
    assert.ok(!plain.some((l) => /phoenix|s3cr3t|gpu|leak/.test(l)), `no persona's resource names: ${plain.join("\n")}`);
    assert.ok(plain.includes('kpip_quota_usage{scope="persona",resource="named"} 10'), plain.join("\n"));
    const labelled = await usage({ metricsPersonaLabels: 1 });
    assert.ok(labelled.includes('kpip_quota_usage{scope="persona:bob",resource="gpu.project_phoenix"} 7'), labelled.join("\n"));
  });

  it("metricsListen off loopback is a ConfigError (no TLS, no authentication) unless metricsAllowRemote 1", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      for (const metricsListen of ["0.0.0.0:9464", "[::]:9464", "127.0.0.2:9464", "example.org:9464"]) {
        assert.throws(() => new Kernel({ home, metricsListen }), ConfigError, metricsListen);
      }
      for (const metricsListen of ["127.0.0.1:0", "[::1]:0", "localhost:0"]) new Kernel({ home, metricsListen });
      new Kernel({ home, metricsListen: "0.0.0.0:9464", metricsAllowRemote: 1 });
      assert.throws(() => new Kernel({ home, metricsAllowRemote: 2 }), ConfigError);
      assert.throws(() => new Kernel({ home, metricsPersonaLabels: 2 }), ConfigError);
    } finally {
      removeHome(home);
    }
  });

  it("a sandboxed command granted sandbox.network reaches the loopback /metrics, and reads no other persona's id there", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel({ metricsListen: "127.0.0.1:0" });
    try {
      const bob = await t.persona("bob-secret-project", [{ ops: ["storage.write"], targets: ["obj://bobws/**"] }]);
      await (await t.connect(bob.identity, [bob.token])).storage.write("obj://bobws/plans", "x".repeat(123));
      const alice = await t.persona("alice", [
        { ops: ["compute.submit", "sandbox.network"], targets: ["op://command/node"] },
        { ops: ["op.*"], targets: ["op://**"] },
      ]);
      const a = await t.connect(alice.identity, [alice.token]);
      const [host, port] = [t.k.metricsAddress?.split(":")[0], t.k.metricsAddress?.split(":")[1]];
      const get = `require("http").get({host:"${host}",port:${port},path:"/metrics"},r=>{let b="";r.on("data",d=>b+=d).on("end",()=>console.log(b))}).on("error",e=>console.log("ERR",e.code))`;
      const d = await a.call("compute.submit", "op://command/node", { args: ["-e", get], network: true });
      const r = (await a.ops.wait((d.payload as { op: string }).op)) as { stdout: Uint8Array };
      const out = Buffer.from(r.stdout).toString();
      // The sandbox shares the host's network when granted: loopback listeners are reachable (documented) ...
      // 123 bytes, a 5-byte path and the row's 512.
      assert.match(out, /kpip_quota_usage\{scope="persona",resource="storage.bytes"\} 640/);
      // ... so the series carry no persona or workspace id.
      assert.ok(!out.includes("bob-secret-project") && !out.includes("bobws"));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
