import { statSync } from "node:fs";
import { Worker } from "node:worker_threads";
import type { Logger } from "../log.js";
import type { SqliteStore } from "./sqlite.js";
import { RepeatedFailureLog } from "./storage-full.js";

/**
 * Moves SQLite's WAL checkpoints off the request path. By default SQLite checkpoints inside
 * the commit that crosses 1,000 WAL pages: that commit copies pages into the database and
 * fsyncs both files, and every request waiting on it waits too (p99.9 at one request in
 * flight fell from ~8.5 ms to ~4.5 ms without it on the 2-core bench machine). Here a worker
 * thread with its own connection runs PASSIVE checkpoints on a timer, which never block the
 * writer; the kernel's connection stops checkpointing on commit. If the worker fails, the
 * kernel's connection checkpoints on commit again.
 *
 * SQLite reuses the WAL from its start only when a write begins with every frame already
 * checkpointed; under sustained load commits keep landing while the worker copies, so that
 * moment may never come and the WAL would grow without bound. When the worker reports more
 * than `topUpFrames` frames, the kernel runs one PASSIVE checkpoint on its own connection
 * (no commit can interleave with it there, and the worker has already copied nearly all of
 * it), so the next commit starts the WAL over; `journal_size_limit` then trims the file.
 * The worker's reports come on a timer, and a busy machine can starve it: so the kernel also
 * looks at the WAL's size after each of its commits ({@link committed}) and tops up past
 * `walHardLimitBytes`, whatever the worker managed (looking once per `statEveryBytes` of commits).
 */
export class WalCheckpointer {
  private readonly worker: Worker;
  private stopped = false;
  private readonly walPath: string;
  private readonly hardLimit: number;
  private readonly statEvery: number;
  /** Estimated WAL bytes committed since the WAL's size was last looked at. */
  private unseen = 0;
  /** Rounds the worker reported, and those after which it synced the database file (pages it copied; see checkpoint-worker.ts). */
  rounds = 0;
  databaseSyncs = 0;
  private readonly roundFailures: RepeatedFailureLog;
  private readonly topUpFailures: RepeatedFailureLog;

  /** Whether checkpoints still run on the worker thread (false after a fallback or stop). */
  get background(): boolean {
    return !this.stopped;
  }

  constructor(
    private readonly store: SqliteStore,
    path: string,
    private readonly log: Logger,
    opts: {
      intervalMs?: number;
      topUpFrames?: number;
      walLimitBytes?: number;
      /** WAL bytes past which the kernel's own commit tops up, however late the worker is. */
      walHardLimitBytes?: number;
      /** Estimated WAL bytes committed between two looks at the WAL's size (default 1 MiB). */
      statEveryBytes?: number;
      /** The worker's module (a test gives one that fails, to see the fallback). */
      workerModule?: URL;
    } = {},
  ) {
    const intervalMs = opts.intervalMs ?? 250;
    this.roundFailures = new RepeatedFailureLog(
      (f, m) => log.warn(f, m),
      "background WAL checkpoint failed; retrying on the next round",
    );
    this.topUpFailures = new RepeatedFailureLog(
      (f, m) => log.warn(f, m),
      "WAL top-up checkpoint failed; retrying on the next report",
    );
    // 16,000 frames (~64 MiB): each top-up holds the kernel's thread for about as long whatever the
    // WAL's size (the worker has copied all but the last round's frames), so a larger WAL means as
    // many fewer stalls: 29 → 6 a minute under `npm run load` (BENCHMARKS.md, round seven).
    const topUpFrames = opts.topUpFrames ?? 16_000;
    const module = opts.workerModule ?? new URL("./checkpoint-worker.js", import.meta.url);
    this.walPath = `${path}-wal`;
    this.hardLimit = opts.walHardLimitBytes ?? 96 * 1024 * 1024;
    this.statEvery = opts.statEveryBytes ?? 1024 * 1024;
    this.worker = new Worker(module, { workerData: { path, intervalMs } });
    this.worker.unref();
    this.worker.on("message", (m: { error?: string; syncError?: string; log?: number; synced?: boolean }) => {
      if (m.syncError !== undefined) return this.syncFailed(new Error(m.syncError));
      // The store failed elsewhere (the WAL's sync for the file store): no checkpoint either.
      const failed = this.store.storageFailure;
      if (failed) return this.syncFailed(failed);
      if (m.synced) this.databaseSyncs++;
      if (!m.error) this.rounds++;
      // Every round (250 ms) while it fails, a full disk's for one: logged when it begins, then once a minute.
      if (m.error) return this.roundFailures.failed({ error: m.error });
      this.roundFailures.reset();
      if (!this.stopped && (m.log ?? 0) > topUpFrames) this.topUp();
    });
    this.worker.on("error", (e) => this.fallBack(e));
    this.worker.on("exit", (code) => {
      if (!this.stopped) this.fallBack(new Error(`checkpoint worker exited with ${code}`));
    });
    store.setAutoCheckpoint(0);
    // Above the top-up's size: the WAL starts over in place instead of being cut and grown again each cycle.
    store.setWalLimit(opts.walLimitBytes ?? 80 * 1024 * 1024);
  }

  /**
   * After a commit of the kernel's, with an upper estimate of the bytes it added to the WAL: once
   * `statEveryBytes` have gone by, a WAL past the hard limit is topped up now. Looking at the size
   * after every commit cost a `stat` per request at one in flight (2 % of the kernel's time); this
   * way the WAL is bounded by the hard limit plus `statEveryBytes` plus one commit.
   */
  committed(walBytes: number): void {
    if (this.stopped) return;
    this.unseen += walBytes;
    if (this.unseen < this.statEvery) return;
    this.unseen = 0;
    const size = statSync(this.walPath, { throwIfNoEntry: false })?.size ?? 0;
    if (size > this.hardLimit) this.topUp();
  }

  /** Called after each top-up checkpoint, with the seconds it held the kernel's thread (metrics). */
  onTopUp: ((seconds: number) => void) | undefined;

  private topUp(): void {
    try {
      const t = process.hrtime.bigint();
      this.store.checkpointNow();
      this.onTopUp?.(Number(process.hrtime.bigint() - t) / 1e9);
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_IOERR_FSYNC") this.syncFailed(e as Error);
      else this.topUpFailures.failed({ err: (e as Error).message });
    }
  }

  /** Why the database file could not be synced, once it could not. */
  syncFailure: Error | undefined;

  /**
   * A sync of the database file failed: a retry could pass while the pages it should have made
   * durable are lost, and a checkpoint that then completes lets SQLite start the WAL over — the
   * only other copy of those pages. So no checkpoint runs again (none on commit either), the
   * store takes no more changes and is not closed cleanly (its close would checkpoint): the WAL
   * stays for SQLite's recovery at the next start, once the disk is mended.
   */
  private syncFailed(e: Error): void {
    if (this.syncFailure) return;
    this.syncFailure = e;
    this.stopped = true;
    this.store.failStorage(e);
    void this.worker.terminate();
    this.log.error(
      { err: e.message },
      "the database file could not be synced: the kernel takes no more changes and keeps the WAL; restart it once the disk is mended",
    );
  }

  private fallBack(e: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    this.log.warn({ err: e }, "background WAL checkpoints stopped: checkpointing on commit again");
    this.store.setAutoCheckpoint(1000);
  }

  /** Runs a last checkpoint on the worker and ends it; the kernel's connection checkpoints on commit again. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    // The worker is unref'd while it runs; waiting for it must keep the process alive.
    this.worker.ref();
    const exited = new Promise<void>((resolve) => this.worker.once("exit", () => resolve()));
    this.worker.postMessage("stop");
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, 5000);
    });
    await Promise.race([exited, timeout]);
    clearTimeout(timer);
    await this.worker.terminate();
    this.store.setAutoCheckpoint(1000);
  }
}
