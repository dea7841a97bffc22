import { createHmac, createPublicKey } from "node:crypto";
import { join, resolve } from "node:path";
import { rawPublicKey } from "@kpip/protocol";
import { AnchorFile } from "../audit/anchors.js";
import { checkInheritedChain } from "../audit/inherit.js";
import { AuditLog } from "../audit/log.js";
import { ConfigError, type KernelConfig } from "../config.js";
import {
  acquireHome,
  ensureAdmin,
  ensureHome,
  FIRST_START_ACTOR,
  HOME_FILES,
  kernelId,
  loadKernelKey,
  useHomeForSqliteTemp,
} from "../home.js";
import type { Logger } from "../log.js";
import { WalCheckpointer } from "../store/checkpointer.js";
import type { LostTail } from "../store/sqlite/audit.js";
import { SqliteStore } from "../store/sqlite.js";
import { RepeatedFailureLog } from "../store/storage-full.js";
import type { AuditRow } from "../store/types.js";
import { prepareSocketPath } from "../transport/uds.js";
import { StorageSpace } from "./storage-space.js";

/**
 * How often the open audit segment is fdatasync'd (off the kernel's thread): what an OS crash
 * can lose of acknowledged records, as SQLite's WAL at synchronous=NORMAL could before.
 */
export const AUDIT_SEGMENT_SYNC_MS = 1000;
/**
 * The kernel signs one checkpoint this many records after it starts (AuditLogOptions.firstCheckpointAfter):
 * early enough that V8 has not yet optimized the audit commit path, late enough that the path's
 * functions collect feedback (V8 allocates it after a few calls).
 */
export const FIRST_CHECKPOINT_AFTER = 200;

/** The home, opened: its database, the WAL worker, the audit log (and its anchors). */
export interface HomeStorage {
  readonly kernelId: string;
  /** The key of this home's listing cursors (primitives/seq-cursor.ts), derived from its signing key: cursors outlive a restart. */
  readonly cursorKey: Buffer;
  readonly store: SqliteStore;
  readonly checkpointer: WalCheckpointer;
  readonly audit: AuditLog;
  /** Whether the home's file system has room, as the kernel's writes find it (system.health, /metrics). */
  readonly space: StorageSpace;
  /** The admin persona's identity file. */
  readonly adminIdentity: string;
  /** The last record of the previous run (before this start journalled anything). */
  readonly lastRecord: AuditRow | undefined;
  /** Records and checkpoints the index named that the newest segment no longer held (dropped at this start). */
  readonly lostTail?: LostTail;
  /** Closes what was opened, in order: audit log (final checkpoint), anchors, WAL worker, store, home lock. */
  close(): Promise<void>;
}

/** What storage reports to whoever counts (the metrics, created later). */
export interface StorageEvents {
  anchorFailed(): void;
  /** SQLite could not index journalled audit batches (kept, retried). */
  indexFailed(): void;
}

/**
 * Takes the home: its lock first (two writers would fork the audit chain), then the socket
 * path (another home may serve it), then the database, the inherited chain's check, the audit
 * log, and the administrative changes journalled while no kernel ran. On failure, what was
 * opened is closed again.
 */
export async function openHome(c: KernelConfig, log: Logger, on: StorageEvents): Promise<HomeStorage> {
  ensureHome(c.home);
  // Before the home's lock, the process's first database: SQLite reads where its temporary files go once.
  const temp = useHomeForSqliteTemp(c.home);
  if (temp) log.debug({ dir: temp }, "SQLite's temporary files go in the home");
  const releaseHome = acquireHome(c.home);
  let database: SqliteStore | undefined;
  // A failed store keeps the home: another kernel of this process would share SQLite's live WAL index.
  const closers: (() => unknown)[] = [() => database?.storageFailure === undefined && releaseHome()];
  // Every closer runs whatever an earlier one threw (a final checkpoint the full disk refused must
  // not leave the WAL worker, the store and the home's lock open: the stop would never end).
  const close = async () => {
    let first: unknown;
    for (const f of closers.reverse()) {
      try {
        await f();
      } catch (e) {
        first ??= e;
        log.error({ err: (e as Error).message }, "closing the kernel's storage: a step failed; the rest still close");
      }
    }
    closers.length = 0;
    if (first !== undefined) throw first;
  };
  try {
    await prepareSocketPath(c.socket);
    const key = loadKernelKey(c.home);
    const dbPath = join(c.home, HOME_FILES.database);
    const store = new SqliteStore(dbPath);
    database = store;
    closers.push(() => store.close());
    // Under the home's lock, before anything reads the chain: what a killed kernel journalled is indexed first.
    const opened = store.useAuditSegments(join(c.home, HOME_FILES.auditSegments), join(c.home, HOME_FILES.auditJournal));
    if (opened.migrated)
      log.info({ records: opened.migrated }, "moved the audit records out of the database into segment files (once)");
    if (opened.lost)
      log.warn(
        { ...opened.lost },
        "the newest audit segment ends before its index (an OS crash before its sync, or a cut): those records are gone from the index; the checkpoints and anchors bound the cut, and this start's kernel.start record names it",
      );
    if (opened.recovered)
      log.info({ records: opened.recovered }, "indexed audit records appended before the last kernel stopped");
    // An OS crash loses at most this long of the open segment's appends (a kernel kill loses none: the page cache keeps them).
    const segmentSync = setInterval(() => void store.syncAuditSegment(), AUDIT_SEGMENT_SYNC_MS);
    segmentSync.unref();
    closers.push(() => clearInterval(segmentSync));
    const space = new StorageSpace(log);
    const checkpointer = new WalCheckpointer(store, dbPath, log);
    closers.push(() => checkpointer.stop());
    const id = kernelId(store);
    const adminIdentity = ensureAdmin(c.home, store, c.adminPersona);
    // Before the first append: never sign over a chain rewritten without the key.
    checkInheritedChain(store, rawPublicKey(createPublicKey(key)), c.auditCheckpointEvery);
    const anchors = openAnchors(c, log, on);
    if (anchors) closers.push(() => anchors.close());
    const unindexed = new RepeatedFailureLog((f, m) => log.error(f, m), "audit records journalled but not yet indexed: retrying");
    const audit = new AuditLog(store, id, key, {
      batchMax: c.auditBatchMax,
      checkpointEvery: c.auditCheckpointEvery,
      checkpointIntervalMs: c.auditCheckpointIntervalMs,
      firstCheckpointAfter: FIRST_CHECKPOINT_AFTER,
      intentMaxBytes: c.auditIntentMaxBytes,
      onCheckpoint: anchors ? (cp) => anchors.append(cp) : undefined,
      onIndexError: (e) => {
        on.indexFailed();
        // Tried again after every commit: logged when it begins and then once a minute, not each time.
        if (!space.failed(e)) unindexed.failed({ err: e.message });
      },
      onCommitFailed: (e) => space.recordsFailed(e),
    });
    space.countCommits(() => audit.committedBatches);
    // An index step refused room (SQLite full) refuses every request with effects at its dedupe
    // lookup, before any record of it is tried: to the uploads' rule, nothing can be recorded then
    // either. Told only by commits, a client polling faster than FULL_HOLD_MS (which holds the
    // probe back) kept the uploads holding the last room alive for good.
    store.onIndexFailed = (e) => space.recordsFailed(e);
    closers.push(() => audit.close());
    // A chain that does not end with a stop (before this start's own records): the previous run was killed or crashed.
    const lastRecord = store.lastAudit();
    const journalled = audit.recordOfflineJournal();
    // The kernel's own first start (creating the admin persona) is journalled too: not news to report as such.
    const offline = journalled.filter((r) => r.actor !== FIRST_START_ACTOR).length;
    if (journalled.length > offline)
      log.info({ admin: c.adminPersona, identity: adminIdentity }, "first start: created the admin persona");
    if (offline) log.info({ records: offline }, "administrative changes made without the kernel are now audited");
    const cursorKey = createHmac("sha256", key.export({ format: "der", type: "pkcs8" }))
      .update("kpip listing cursors v1")
      .digest()
      .subarray(0, 16);
    return {
      kernelId: id,
      cursorKey,
      store,
      checkpointer,
      audit,
      space,
      adminIdentity,
      lastRecord,
      ...(opened.lost ? { lostTail: opened.lost } : {}),
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** The audit anchor file, when one is configured: opened now, so a bad path stops the start. */
function openAnchors(c: KernelConfig, log: Logger, on: StorageEvents): AnchorFile | undefined {
  if (!c.auditAnchorFile) return undefined;
  const path = resolve(c.auditAnchorFile);
  let anchors: AnchorFile;
  try {
    anchors = new AnchorFile(path);
  } catch (e) {
    throw new ConfigError(`auditAnchorFile ${c.auditAnchorFile} cannot be opened for appending: ${(e as Error).message}`);
  }
  if (path.startsWith(`${resolve(c.home)}/`)) {
    log.warn({ file: path }, "audit anchors inside the home protect against little: keep them elsewhere");
  }
  anchors.onError = (e, seq) => {
    on.anchorFailed();
    log.error({ err: e, file: path, seq }, "could not append an audit anchor");
  };
  return anchors;
}
