import { detailJson } from "../audit/detail.js";
import { AuditRetention } from "../audit/retention.js";
import { suppressedHandshakesRecord } from "../audit/suppressed-records.js";
import type { KernelConfig } from "../config.js";
import type { EventBus } from "../events/bus.js";
import { MIN_TICK_MS, PRUNE_INTERVAL_MS, SUPPRESSED_FLUSH_MS } from "../limits.js";
import type { Logger } from "../log.js";
import { SliceLoop } from "../slice-loop.js";
import { DedupePruner } from "../store/dedupe-pruner.js";
import { RepeatedFailureLog } from "../store/storage-full.js";
import type { KernelServices } from "./compose.js";
import { PrunerFailures } from "./pruner-failures.js";
import { recordLateRecords } from "./storage-space.js";

/** Ended agents or finished ops forgotten per slice: each may free two outputs of up to maxOutputBytes. */
const PRUNE_SLICE = 8;

/**
 * One timer for every session: heartbeats, dead peers, handshake timeouts (a slice of sessions a
 * turn), dedupe expiry (a slice a tick),
 * changes made without the kernel, due checkpoints. Pruning (dedupe, ops, tokens, audit
 * retention, the last a slice a turn) on the first tick, then every PRUNE_INTERVAL_MS.
 */
export function startHousekeeping(
  s: KernelServices,
  c: KernelConfig,
  log: Logger,
  events: Pick<EventBus, "sweepLapsed" | "stopSweeps">,
): { stop(): void } {
  let lastPrune = 0;
  const failures = new PrunerFailures(log, s.metrics.prunerFailures);
  const checkpointFailures = new RepeatedFailureLog(
    (f, m) => log.error(f, m),
    "the audit's timed checkpoint could not be stored; the next tick tries again",
  );
  const dedupePruner = new DedupePruner(s.store);
  dedupePruner.onError = (e) => failures.failed("dedupe", e);
  const retention = new AuditRetention(s.audit, c.auditRetainRecords, log);
  // Retention logs its own failures (at error: the log keeps growing); they are counted with the pruners'.
  retention.onError = () => s.metrics.prunerFailures.inc({ pruner: "audit" });
  // Pruning removes evidence: the chain says when the kernel did it and through which record, so a
  // log missing its start without such a record was cut by someone else (kpip audit verify).
  retention.onPruned = (records, span) => {
    const through = (s.store.firstAuditSeq() ?? 1) - 1;
    s.records.record({
      op: "audit.pruned",
      target: "kernel://",
      message: `records 1..${through} pruned behind the signed checkpoint at ${through} (auditRetainRecords ${c.auditRetainRecords})`,
      // Whose records went, and how many were effects (intents): a flood that pushed a persona's acts out shows.
      detail: { through, records, retain: c.auditRetainRecords, ...(span ? { span } : {}) },
    });
  };
  // Failed handshakes counted past the record rate go on the record soon after the first of them,
  // not only at the tick: a kill before their record leaves them off it for good (case 714).
  let soon: NodeJS.Timeout | undefined;
  const flushHandshakes = () => {
    if (soon !== undefined) clearTimeout(soon);
    soon = undefined;
    flushSuppressedHandshakes(s);
  };
  s.host.handshakeRecords.onCounted = () => {
    soon ??= setTimeout(flushHandshakes, SUPPRESSED_FLUSH_MS).unref();
  };
  const agentPruner = new SliceLoop();
  const opPruner = new SliceLoop();
  const tickMs = Math.max(MIN_TICK_MS, Math.min(c.heartbeatMs, c.handshakeTimeoutMs) / 2);
  const timer = setInterval(() => {
    const now = Date.now();
    // On the monotonic clock: a wall clock stepped back would put handshake timeouts and dead-peer checks that much late.
    s.sessions.tick(performance.now());
    // Subscriptions and watches whose capability expired end now (a slice a turn), not only at their next event.
    events.sweepLapsed();
    // What runs under a token whose root key was retired since ends, as for a revocation (a
    // retirement is made in the key file, without the kernel: it is seen here, at most a tick late).
    s.compute.cancelRetired((g) => s.enforcer.keyRetired(g));
    s.agents.killRetired((k) => s.enforcer.kidRetired(k.kid));
    s.uploads.dropRetired((g) => s.enforcer.keyRetired(g));
    // A task's leftover spinning in an idle worker kept warm for its persona: ended, not left burning a core.
    s.compute.endSpinningIdle(now);
    // An idle worker holds what its persona's tasks left in its heap: given back once no task came for computeIdleWorkerMs.
    s.compute.endAgedIdle(now);
    s.host.peerLog.sweep(now);
    s.dedupe.sweep(now);
    s.applyOfflineChanges();
    s.pipeline.flushSuppressed();
    flushHandshakes();
    // A timed checkpoint finds no room on a full disk (SQLITE_FULL): thrown out of the tick, it
    // ended the kernel's process. The storage's condition notes it; the next tick tries again
    // (once a tick). Each refusal renews the condition before the probe below looks at it, so while
    // the checkpoint does not fit the storage stays full — the store it goes to refuses what else
    // must be stored too, even though a small record still fits the journal — rather than health
    // flipping to healthy on the probe's record and back at the next attempt.
    try {
      s.audit.checkpointIfDue(now);
    } catch (e) {
      s.space.failed(e);
      checkpointFailures.failed({ err: (e as Error).message });
    }
    storageProbe(s);
    failUploadsWhileFull(s, now, c.fullDiskUploadFailMs, log);
    storeKept(s, log);
    // Object bodies changes stopped naming since the last tick: one WAL sync for the batch, then
    // those still unnamed go (not a sync per delete on a request's turn).
    try {
      s.blobs.flushReleased();
    } catch (e) {
      failures.failed("bodies", e);
    }
    // Expired dedupe records go a slice at a time (a whole-table DELETE was a 60–180 ms stall);
    // the first pass after a start walks the whole table (what expired while the kernel was down).
    if (lastPrune === 0) dedupePruner.sweep(now);
    else dedupePruner.run(now);
    // Ended agents past their retention, with their output (up to 2 × maxOutputBytes each): a few a
    // turn, every tick, so a persona that spawns many short agents never leaves a large DELETE behind.
    agentPruner.run(() => {
      try {
        return s.agents.prune(now - c.agentRetentionMs, PRUNE_SLICE) >= PRUNE_SLICE;
      } catch (e) {
        failures.failed("agents", e);
        return false; // the store is closing or busy: the next tick starts again
      }
    });
    if (now - lastPrune > PRUNE_INTERVAL_MS) {
      lastPrune = now;
      // Finished ops past their TTL, with their results (up to 2 × maxOutputBytes each), a slice a turn.
      opPruner.run(() => {
        try {
          return s.store.pruneOps(now, PRUNE_SLICE) >= PRUNE_SLICE;
        } catch (e) {
          failures.failed("ops", e);
          return false;
        }
      });
      try {
        s.tokens.pruneExpired(now - c.tokenRetentionMs);
      } catch (e) {
        // Uncaught, its throw left the timer: an uncaught exception, the kernel gone.
        failures.failed("tokens", e);
      }
      retention.run();
    }
  }, tickMs);
  timer.unref();
  return {
    stop: () => {
      clearInterval(timer);
      s.sessions.stopTicks();
      dedupePruner.stop();
      agentPruner.stop();
      opPruner.stop();
      events.stopSweeps();
      retention.stop();
      // The counts since the last tick (they were dropped); the store's close writes the drain's.
      flushHandshakes();
    },
  };
}

/**
 * While the kernel's storage is full, a tick (FULL_HOLD_MS after the last write refused room)
 * appends a `kernel.storage` record saying since when and how many requests were refused: its
 * commit is the proof that there is room again, and puts the episode on the record.
 */
function storageProbe(s: KernelServices): void {
  const p = s.space.probe();
  if (!p) return;
  s.audit
    .append({
      session: "kernel",
      persona: "-",
      phase: "kernel",
      op: "kernel.storage",
      target: "kernel://",
      status: "SUCCESS",
      message: "the kernel's storage has room again",
      detail: detailJson({ fullSince: p.since, refused: p.refused, error: p.error }),
    })
    .then(
      () => {
        s.space.ended();
        // Room again: the records kept meanwhile (effects' outcomes, the kernel's acts) go on the record.
        if (!s.space.full) void recordLateRecords(s.space, s.audit);
      },
      (e) => s.space.probeFailed(e),
    );
}

/**
 * What a full disk refused and the kernel keeps in force meanwhile — ops' and agents' ends, the
 * kernel's revocations, ended agents' keys — stored as soon as there is room (each stops at its
 * first refusal: a tick on a full disk costs a failed write or three).
 */
export function storeKept(s: Pick<KernelServices, "tokens" | "agents" | "compute">, log: Logger): void {
  // Each on its own: a revocation store that fails must not keep agents' ends and ops' rows back.
  for (const part of [s.tokens, s.agents, s.compute])
    try {
      part.storeKept();
    } catch (e) {
      log.error({ err: e }, "cannot store what the full disk kept back");
    }
}

/** One `audit.suppressed` record per transport for the failed handshakes over the record rate since the last tick. */
function flushSuppressedHandshakes(s: KernelServices): void {
  for (const x of s.host.handshakeRecords.take()) s.audit.append(suppressedHandshakesRecord(x)).catch(() => {});
}

/** Nothing could be recorded for a while: the uploads in progress fail, their partial bytes freed (UploadTable.failAll). */
function failUploadsWhileFull(s: Pick<KernelServices, "space" | "uploads">, now: number, afterMs: number, log: Logger): void {
  // Only while nothing can be recorded: a body the file store has no room for (which a persona
  // can cause at will, records still fitting) must not fail every other persona's upload.
  const unrecorded = s.space.unrecordedFor(now);
  if (unrecorded < afterMs || s.uploads.size === 0) return;
  const failed = s.uploads.failAll(
    `the kernel's storage has been full for ${Math.round(unrecorded / 1000)} s, nothing could be recorded: uploads in progress were failed to give their bytes back; upload again once there is room`,
  );
  if (failed)
    log.warn({ uploads: failed }, "the kernel's storage stays full: uploads in progress failed, their partial bytes freed");
}
