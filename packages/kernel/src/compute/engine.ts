import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import type { EventLoopUtilization } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import { type CborValue, decodeCanonical, encodeCanonical, type Grant, isErrorClass, ownCopy } from "@kpip/protocol";
import { processIdentity, SPAWN_ENV, stillOwnGroup } from "../agents/process-identity.js";
import { tokenRef } from "../auth/revocations.js";
import type { EventBus } from "../events/bus.js";
import { emitKernelEvent } from "../events/kernel-topics.js";
import type { Logger } from "../log.js";
import { OpError } from "../primitives/types.js";
import { FIRST_SEGMENT, inTree, type TreeRoots, treeBoundRefusal } from "../resources/lineage.js";
import { closePipesAfterExit, exitedBefore, killSandbox } from "../sandbox/kill.js";
import { OutputCapture, throttlePastCapture } from "../sandbox/output.js";
import { type ProcessTable, reservedFrom } from "../sandbox/processes.js";
import { type Launch, launchFailure, type Sandbox } from "../sandbox/sandbox.js";
import { DEFAULT_KEPT_BYTES, KeptBytes, KeptWrites, notKeptMessage } from "../store/storage-full.js";
import type { OpRecord, OpStore } from "../store/types.js";
import { IDLE_WORKER_MS, type IdleBusy, idleBusyAdd } from "./idle-workers.js";

/** An embedder's task function: an export of an ES module, run in a worker thread. */
export interface TaskRegistration {
  /** Module URL or absolute path. */
  module: string | URL;
  /** Export name (default "default"). */
  export?: string;
}

export interface ComputeOptions {
  /** What the results of ops that ended while the storage was full may hold in memory (shared with agents' output). */
  keptBytes?: KeptBytes;
  /** Worker threads for task functions: the most that run tasks at once. */
  workers: number;
  /**
   * Idle workers kept beyond `workers`, each its own persona's (a worker serves one persona), so
   * personas taking turns find their own warm worker instead of a new one each turn (default 2).
   */
  idleWorkers?: number;
  /**
   * How long a worker stays idle before the housekeeping tick ends it (0: kept until another
   * persona's worker needs its place): an idle worker holds whatever heap its persona's tasks
   * left (up to workerHeapMb), so the warm pool is given back when no task comes (default 60 s).
   */
  idleWorkerMs?: number;
  /**
   * Most JavaScript heap (V8's old generation, MiB) a task worker may hold, 0 for V8's own bound:
   * a worker lives in the kernel's process, so a task its input steers to hoard would otherwise
   * grow the kernel until the host's OOM killer ended it, for everyone. Buffers and ArrayBuffers
   * are outside this bound.
   */
  workerHeapMb?: number;
  /** How long finished ops and their results are kept. */
  resultTtlMs: number;
  /**
   * Finished ops (and results) kept per persona tree within that time. Beyond it the oldest read
   * (or past their grace) are forgotten; a tree's unread results within their grace and its
   * pending ops together stay below it (a submit beyond is refused), so no trim takes a result
   * its poller has yet to read.
   */
  maxFinishedPerPersona: number;
  /** How long an unread result keeps its place against the trim: the window its poller has to read it. */
  resultGraceMs: number;
  /** Output captured per stream of a command, in bytes. */
  maxOutputBytes: number;
  /** Longest an op may run: its default deadline, and the latest one its intent or args may set (at most 2^31 - 1, config.ts). */
  maxRuntimeMs: number;
  /** Ops queued or running per persona, and in the kernel: each waits in memory and in the store. */
  maxPendingPerPersona: number;
  maxPending: number;
  /**
   * Largest input of one task (its args, CBOR-encoded), and the inputs of the tasks queued or
   * running in the kernel together: each is held in the kernel's memory until its task ends.
   */
  maxTaskInputBytes: number;
  maxQueuedTaskInputBytes: number;
  /** The inputs one persona tree's tasks queued or running may hold: its share of maxQueuedTaskInputBytes (absent: none). */
  maxQueuedTaskInputBytesPerPersona?: number;
  /**
   * The admin persona, exempt from the tree's shares, and the ops it alone may take: the last
   * `adminReserve` of maxPending, and as large a part of maxQueuedTaskInputBytes.
   */
  admin?: string;
  adminReserve?: number;
  /** The top of each persona's tree (maxPendingPerPersona counts it); by first segment when absent. */
  roots?: TreeRoots;
}

/** What runs a command: the sandbox, the process table, and the persona's in-flight count. */
export interface CommandHost {
  sandbox: Sandbox;
  processes: ProcessTable;
  /** Holds one of the persona's `concurrent` slots for a command's life (a task's, queued or running); returns the release. */
  hold(persona: string): () => void;
  /** Puts an op's state change on the audit record (`op.state`). */
  /** `outlived`: an interrupted command whose processes ran on after the kernel died, killed by this start. */
  recordState?(
    op: OpRecord,
    state: OpAuditState,
    from: OpAuditState | null,
    written?: () => void,
    recovered?: boolean,
    outlived?: boolean,
  ): void;
  /** Told of a write refused for lack of room (kernel/storage-space.ts): the condition is noted and logged there. */
  storageFull?(e: unknown): void;
  /** The kernel's clock, which a grant's expiry is on (the enforcer judges by it); the host's when absent. */
  tokenClock?(): number;
}

/** The states an op's audit records name: its store state, with `created` for queued and `interrupted` for an op a kernel stop ended. */
export type OpAuditState = "created" | "running" | "succeeded" | "failed" | "cancelled" | "interrupted";
const auditState = (s: OpRecord["state"]): OpAuditState => (s === "queued" ? "created" : s);

/** How one command runs: from the authorizing grant. */
export interface CommandGrant {
  grant: Grant | undefined;
  network: boolean;
}

/**
 * Why the kernel stops an op before it ends: op.cancel, its deadline, a revocation covering its
 * authorizing grant, or the removal of the persona that submitted it.
 */
type StopReason = "cancelled" | "deadline" | "revoked" | "retired" | "removed";

interface Running {
  id: string;
  op: OpRecord;
  /** The grant that authorized the submit (a revocation covering it cancels the op). */
  grant: Grant | undefined;
  /** Stops it for `reason`; true when this call began its stop (false: it was already ending). */
  cancel(reason: StopReason): boolean;
  /** A command: settles when its whole process tree has ended. */
  closed?: Promise<void>;
}

/**
 * Least milliseconds an idle worker's event loop is busy since its last task before its next task
 * ends it as a leftover's ({@link ComputeEngine.spunIdle}): a task's short after-work (a collection
 * of its heap) is not taken for one. A longer one only costs its persona a new worker, never a task.
 */
const IDLE_SPUN_MIN_MS = 250;

/** Why the engine ended an idle worker (`kpip_task_workers_ended_total`'s reason). */
type IdleEnd = "evicted" | "spinning" | "removed" | "aged";

interface PooledWorker {
  worker: Worker;
  busy: string | undefined;
  /**
   * The persona whose tasks it ran, and when the first of them was submitted: it takes no other
   * persona's task (what a task leaves in its worker — timers, module caches, globals, prototypes,
   * heap — is its persona's alone); replaced by a new worker for another's ({@link workerFor}).
   */
  owner?: { persona: string; since: number };
  /** Tasks it was given: a reused worker may still hold an earlier task's (its persona's) timers. */
  ran: number;
  /** The turn its last task started ({@link workerFor} ends the idle worker used longest ago first). */
  used: number;
  /** Its event loop's use when last looked at idle ({@link endSpinningIdle}). */
  elu?: EventLoopUtilization;
  /** What its event loop was busy while idle, in the current window (idle-workers.ts). */
  idleBusy?: IdleBusy;
  /** Its event loop's use when its last task ended ({@link ComputeEngine.spunIdle}). */
  endedAt?: EventLoopUtilization;
  /** When it last became idle (made, or its task ended): {@link endAgedIdle}. */
  idleSince: number;
  /** The running task's end when its worker dies under it (set by runTask while it runs). */
  died?: (why: string) => void;
  /** It ended out of memory (workerHeapMb): its task fails RESOURCE, not INTERNAL. */
  outOfMemory?: boolean;
}

interface Job {
  op: OpRecord;
  args: CborValue;
  command?: CommandGrant;
  /** The grant that authorized the submit: its expiry caps the deadline, its revocation cancels the op. */
  grant: Grant | undefined;
  /** The deadline is the grant's expiry (it came before every other bound). */
  expiresWithGrant: boolean;
}

/**
 * Runs DEFERRED ops: allowed commands as child processes (no shell, own process group),
 * and registered task functions in a worker pool, so the kernel keeps serving meanwhile.
 * State lives in the op store, so results survive a restart; an op that was running when
 * the kernel died is reported failed with class INTERNAL at the next start.
 */
export class ComputeEngine {
  private readonly tasks = new Map<string, { module: string; export: string }>();
  private readonly running = new Map<string, Running>();
  private readonly queue: Job[] = [];
  /** The deadline timer of each task while it is queued, by op id (cleared when it starts or ends). */
  private readonly queuedTimers = new Map<string, NodeJS.Timeout>();
  /** What each task queued or running holds until it ends, by op id: its `concurrent` slot (the release) and its input's bytes. */
  private readonly taskHolds = new Map<string, { release: () => void; inputBytes: number; tree: string }>();
  /** The input bytes of the tasks queued or running (the sum over {@link taskHolds}), and by persona tree. */
  private heldInputBytes = 0;
  private readonly treeInputBytes = new Map<string, number>();
  private readonly pool: PooledWorker[] = [];
  private stopped = false;
  /**
   * Op row changes a full disk refused (an op started or ended meanwhile): what the op's persona
   * reads ({@link current}), and stored once there is room ({@link storeKept}): without it, an
   * op that ended on a full disk read "running" for good, and one that started then crashed the
   * kernel from its predecessor's exit handler. Ends are not bounded by what is in progress:
   * their results are held within the tree's share of `keptBytes`.
   */
  private readonly kept: KeptWrites<Partial<OpRecord>>;

  constructor(
    private readonly store: OpStore,
    private readonly events: EventBus,
    private readonly opts: ComputeOptions,
    private readonly log: Logger,
    private readonly host: CommandHost,
  ) {
    this.roots = opts.roots ?? FIRST_SEGMENT;
    // An ended op's result, kept for room, is held within its tree's share of keptBytes: past it,
    // the end is kept without it, saying so (ends are not bounded by what is in progress).
    const budget = opts.keptBytes ?? new KeptBytes(DEFAULT_KEPT_BYTES);
    this.kept = new KeptWrites((e) => this.host.storageFull?.(e), {
      budget: () => budget,
      bytes: (v) => v.result?.byteLength ?? 0,
      without: (v, n) => {
        const why = notKeptMessage("its result", n);
        return { ...v, result: null, message: v.message ? `${v.message}; ${why}` : why };
      },
    });
  }

  /** The top of a persona's tree (the registry's; by first segment when none was given). */
  private readonly roots: TreeRoots;

  registerTask(name: string, reg: TaskRegistration): void {
    if (!/^[a-z][a-z0-9_-]{0,63}$/.test(name)) throw new Error(`invalid task name ${JSON.stringify(name)}`);
    const module = reg.module instanceof URL ? reg.module.href : reg.module.startsWith("/") ? `file://${reg.module}` : reg.module;
    this.tasks.set(name, { module, export: reg.export ?? "default" });
  }

  hasTask(name: string): boolean {
    return this.tasks.has(name);
  }

  /** After a crash: ops the previous process left queued or running become FAILED/INTERNAL. */
  recover(killed = true): string[] {
    // Ends stored before a kill cut off their op.state record (its commit is a turn later): on
    // the record now, once; after a clean stop every record committed, so only the marks go.
    for (const id of this.store.unrecordedOpEnds()) {
      // With its result: the record names its hash (opResultDetail).
      const op = killed ? this.store.getOp(id) : undefined;
      if (op) this.host.recordState?.(op, auditState(op.state), null, () => this.endRecorded(id), true);
      else this.endRecorded(id);
    }
    // A command's process outlives a kill unless its sandbox dies with the kernel (bubblewrap's
    // --die-with-parent; not with sandbox "none"): ended before its op is recorded as ended, or
    // it would act on with its op on the record as failed. Only a group still its own is signalled.
    const outlived = new Set<string>();
    for (const p of this.store.interruptedOpProcesses()) if (endLeftProcess(p, this.log)) outlived.add(p.id);
    const ops = this.store.failInterruptedOps("the kernel stopped while the op was running", Date.now());
    for (const { id, state } of ops) {
      const op = this.store.getOp(id) as OpRecord;
      this.host.recordState?.(op, "interrupted", auditState(state), () => this.endRecorded(id), false, outlived.has(id));
      this.emitDone(op);
    }
    return ops.map((o) => o.id);
  }

  submit(
    persona: string,
    session: string,
    kind: OpRecord["kind"],
    name: string,
    args: CborValue,
    deadline: number | undefined,
    command?: CommandGrant,
    grant?: Grant,
    /** Which spawn of an agent persona submits it (its token id; OpRecord.spawn). */
    spawn: string | null = null,
  ): OpRecord {
    this.admitPending(persona);
    const input = kind === "task" ? this.admitInput(persona, args) : undefined;
    const inputBytes = input?.byteLength ?? 0;
    // The task's input waits as a copy of its own (byte strings views of its encoding, counted):
    // a decoded byte string is a view of the REQUEST frame it came in, so a one-byte one kept a
    // whole frame (an unknown field pads it to maxBody) for a task counted a few bytes.
    if (input !== undefined) args = decodeCanonical(ownCopy(input));
    if (kind === "command") {
      // Refused now, before there is an op: no sandbox, or one process too many.
      this.host.sandbox.check();
      this.host.processes.admit(persona, command?.grant);
    }
    const now = Date.now();
    // Never later than maxRuntimeMs (as an agent's lifetime; the config keeps it within one Node
    // timer): a timeoutMs near 2^53 made a deadline no peer could decode, and one past 2^31 ms
    // overflowed the timer (killed at once). Nor later than the authorizing grant's expiry: the
    // op ends with the authority that started it, as an agent's lifetime does (PROTOCOL C.5).
    const bound = Math.min(deadline ?? Number.POSITIVE_INFINITY, now + this.opts.maxRuntimeMs);
    // The grant's expiry is on the kernel's clock (the enforcer's), the op's times on the host's:
    // read as a host time, a kernel clock ahead of the host's let the op outlive its authority
    // by the difference, and one behind ended it at once as expired while the token was live.
    const expiry = grant === undefined ? undefined : now + (grant.exp - (this.host.tokenClock?.() ?? now));
    const expiresWithGrant = expiry !== undefined && expiry < bound;
    const deadlineAt = expiresWithGrant ? expiry : bound;
    const op: OpRecord = {
      id: randomBytes(16).toString("hex"),
      persona,
      session,
      kind,
      name,
      state: "queued",
      result: null,
      errorClass: null,
      message: null,
      createdAt: now,
      startedAt: null,
      finishedAt: null,
      deadline: deadlineAt,
      expiresAt: now + this.opts.resultTtlMs,
      spawn,
    };
    this.store.insertOp(op);
    this.host.recordState?.(op, "created", null);
    // A task, queued or running, takes over the slot of the request that submitted it until it
    // ends, as a running command does (runCommand): uncounted, a token's `concurrent` bounded
    // none of the tasks it kept queued and running, the kernel's shared workers among them.
    if (kind === "task") {
      const tree = this.roots.of(persona);
      this.taskHolds.set(op.id, { release: this.host.hold(persona), inputBytes, tree });
      this.heldInputBytes += inputBytes;
      this.treeInputBytes.set(tree, (this.treeInputBytes.get(tree) ?? 0) + inputBytes);
    }
    const job: Job = { op, args, ...(command ? { command } : {}), grant, expiresWithGrant };
    this.queue.push(job);
    // A queued op's deadline counts while it waits (PROTOCOL §7.5): without this timer a task behind
    // busy workers stayed queued past it, holding its tree's place, `concurrent` slot and input bytes
    // until a worker freed up, and then started only to be stopped at once.
    if (kind === "task") {
      const timer = setTimeout(() => this.expireQueued(job), Math.max(0, deadlineAt - now));
      timer.unref();
      this.queuedTimers.set(op.id, timer);
    }
    this.pump();
    return op;
  }

  /** A queued op's deadline passed: it ends as a running one would, never started. */
  private expireQueued(job: Job): void {
    const i = this.queue.indexOf(job);
    if (i < 0) return;
    this.queue.splice(i, 1);
    this.finishUnstarted(job);
  }

  /** An op whose deadline passed before it started: FAILED without running (RESOURCE, or CAPABILITY when the deadline was its grant's expiry). */
  private finishUnstarted(job: Job): void {
    const what = "it never started (it was queued)";
    if (job.expiresWithGrant) this.finish(job.op, "failed", null, "CAPABILITY", expiredMessage(job.grant, what));
    else this.finish(job.op, "failed", null, "RESOURCE", `deadline exceeded: ${what}`);
  }

  /** Refuses (RESOURCE) an op past the persona's or the kernel's bound of ops queued or running. */
  private admitPending(persona: string): void {
    const total = this.queue.length + this.running.size;
    const { maxPending, admin, adminReserve } = this.opts;
    // The last adminReserve are the admin persona's: a few trees' hanging ops leave it room to act.
    const reserved = reservedFrom(persona, maxPending, admin, adminReserve);
    if (total >= maxPending - reserved)
      throw new OpError(
        "RESOURCE",
        total >= maxPending
          ? `the kernel already has ${total} ops queued or running (at most ${maxPending})`
          : `the kernel already has ${total} ops queued or running: the last ${reserved} of ${maxPending} are reserved for the admin`,
      );
    // Counted over the persona's whole tree: its agents and sub-personas queue no ops of their own.
    const root = this.roots.of(persona);
    let mine = 0;
    for (const j of this.queue) if (inTree(j.op.persona, root)) mine++;
    for (const r of this.running.values()) if (inTree(r.op.persona, root)) mine++;
    if (mine >= this.opts.maxPendingPerPersona)
      throw new OpError(
        "RESOURCE",
        treeBoundRefusal(root, persona, {
          held: (max) => `already has ${mine} ops queued or running (at most ${max})`,
          what: "ops queued or running",
          bound: "maxPendingOpsPerPersona",
          limit: this.opts.maxPendingPerPersona,
        }),
      );
    // Each op may finish with a result its poller has yet to read, which no trim takes within its
    // grace: such results and the ops that may yet make one stay below the tree's bound.
    const max = this.opts.maxFinishedPerPersona;
    const kept = this.keptEnds.get(root)?.size ?? 0;
    const unread = this.store.countUnreadOps(root, Date.now() - this.opts.resultGraceMs) + kept;
    if (mine + unread >= max)
      throw new OpError(
        "RESOURCE",
        `${treeBoundRefusal(root, persona, {
          held: (limit) =>
            `has ${unread} op results not yet read (op.result${kept ? `; ${kept} of them ended while the kernel's storage was full, kept until it has room` : ""}) and ${mine} ops queued or running (at most ${limit} together)`,
          what: "op results not yet read (op.result) and ops queued or running",
          bound: "maxFinishedOpsPerPersona",
          limit: max,
        })}: read them, or wait up to ${this.opts.resultGraceMs} ms`,
      );
  }

  /**
   * A task's input size (CBOR-encoded): SEMANTIC past maxTaskInputBytes, RESOURCE past what the
   * kernel holds for the tasks queued or running. Every input waits in the kernel's memory until
   * its task ends: ops were counted, not their inputs, and one persona tree's 64 queued tasks of
   * ~15 MiB each held ~900 MiB of the kernel's heap (a few trees, its whole heap limit).
   */
  private admitInput(persona: string, args: CborValue): Uint8Array {
    const encoded = encodeCanonical(args);
    const n = encoded.byteLength;
    const { maxTaskInputBytes, maxQueuedTaskInputBytes: max, maxQueuedTaskInputBytesPerPersona: share } = this.opts;
    if (n > maxTaskInputBytes)
      throw new OpError("SEMANTIC", `the task's input is ${n} bytes: at most ${maxTaskInputBytes} (maxTaskInputBytes)`);
    // The admin persona's reserve: the last adminReserve of maxPending, and as large a part of the
    // bytes (a few trees' hanging tasks would otherwise keep it from submitting any).
    const { maxPending, admin, adminReserve } = this.opts;
    const ops = reservedFrom(persona, maxPending, admin, adminReserve);
    const reserved = ops && reservedFrom(persona, max, admin, Math.floor((max * ops) / maxPending));
    const held = this.heldInputBytes;
    if (held + n > max - reserved)
      throw new OpError(
        "RESOURCE",
        `the kernel already holds ${held} bytes of input for tasks queued or running (at most ${max}, maxQueuedTaskInputBytes${held + n > max ? "" : `, the last ${reserved} of them reserved for the admin`}): retry once some end`,
      );
    if (share === undefined || persona === admin) return encoded;
    // A tree's share: one tree's hanging tasks (maxPendingOpsPerPersona of maxTaskInputBytes) would
    // hold a quarter of the kernel's bytes, four trees all of them.
    const root = this.roots.of(persona);
    const mine = this.treeInputBytes.get(root) ?? 0;
    if (mine + n > share)
      throw new OpError(
        "RESOURCE",
        `${treeBoundRefusal(root, persona, {
          held: (limit, bound) =>
            `already holds ${mine} bytes of input for tasks queued or running; ${n} more would pass its share of ${limit} (${bound})`,
          what: "bytes of input for tasks queued or running",
          bound: "maxQueuedTaskInputBytesPerPersona",
          limit: share,
          asked: n,
        })}: retry once some end`,
      );
    return encoded;
  }

  /** Cancels a queued or running op; false when it already finished. */
  cancel(id: string): boolean {
    const r = this.running.get(id);
    // A command already being stopped (an earlier op.cancel, its deadline, a revocation) stays
    // here until its process closes: this call did not stop it (op.cancel's `cancelled`).
    if (r) return r.cancel("cancelled");
    const i = this.queue.findIndex((j) => j.op.id === id);
    if (i >= 0) {
      const [job] = this.queue.splice(i, 1);
      this.finish((job as Job).op, "cancelled", null, "SEMANTIC", "cancelled by the persona");
      return true;
    }
    return false;
  }

  /**
   * The revocation fan-out's part here: every op queued or running whose authorizing grant
   * `isRevoked` covers is cancelled (a running command's sandbox killed, a task's worker
   * replaced), its outcome CANCELLED with class CAPABILITY saying its authority was revoked.
   * Returns how many.
   */
  cancelRevoked(isRevoked: (g: Grant) => boolean): number {
    return this.cancelWhere(isRevoked, "revoked", revokedMessage);
  }

  /**
   * Like {@link cancelRevoked}, for a grant whose token's key was retired (`kpip token
   * retire-key`): the key no longer verifies it, so what it started ends too — queued ops
   * cancelled, running ones stopped — CANCELLED with class CAPABILITY. Returns how many.
   */
  cancelRetired(retired: (g: Grant) => boolean): number {
    return this.cancelWhere(retired, "retired", retiredMessage);
  }

  /** Cancels every op queued or running whose grant `lapsed` picks: queued ones with `message`, running ones stopped for `why`. */
  private cancelWhere(lapsed: (g: Grant) => boolean, why: "revoked" | "retired", message: (g: Grant) => string): number {
    let n = 0;
    for (let i = 0; i < this.queue.length; ) {
      const job = this.queue[i] as Job;
      if (job.grant && lapsed(job.grant)) {
        this.queue.splice(i, 1);
        this.finish(job.op, "cancelled", null, "CAPABILITY", message(job.grant));
        n++;
      } else i++;
    }
    for (const r of [...this.running.values()]) {
      if (r.grant && lapsed(r.grant)) {
        r.cancel(why);
        n++;
      }
    }
    return n;
  }

  /**
   * The expulsion's part here (kernel/expulsion.ts): every op queued or running that a persona
   * `gone` says is no longer registered submitted ends — a queued one CANCELLED, a running task
   * stopped and FAILED, class PERMISSION — whatever token authorized it (a parent's token a
   * sub-persona used is not revoked by the removal). Returns how many.
   */
  cancelOf(gone: (persona: string, since: number) => boolean): number {
    let n = 0;
    for (let i = 0; i < this.queue.length; ) {
      const job = this.queue[i] as Job;
      if (gone(job.op.persona, job.op.createdAt)) {
        this.queue.splice(i, 1);
        this.finish(job.op, "cancelled", null, "PERMISSION", "cancelled: the persona that submitted it was removed");
        n++;
      } else i++;
    }
    // A running command is a process: the process table's kill of a removed persona's processes ends it.
    for (const r of [...this.running.values()]) {
      if (r.op.kind === "task" && gone(r.op.persona, r.op.createdAt)) {
        r.cancel("removed");
        n++;
      }
    }
    // An idle worker holds what its persona's tasks left: a later holder of the id gets a new one.
    for (const w of [...this.pool])
      if (w.busy === undefined && w.owner && gone(w.owner.persona, w.owner.since)) this.endIdle(w, "removed");
    return n;
  }

  get runningCount(): number {
    return this.running.size;
  }
  get queuedCount(): number {
    return this.queue.length;
  }

  private pump(): void {
    // A command never waits (it was admitted as a running process at submit).
    for (let i = 0; !this.stopped && i < this.queue.length; ) {
      const job = this.queue[i] as Job;
      if (job.op.kind === "command") {
        this.queue.splice(i, 1);
        this.start(job);
      } else i++;
    }
    // Tasks wait for a free worker, taken in turn by persona tree ({@link nextTask}).
    while (!this.stopped && this.queue.length > 0 && this.hasRoom()) {
      const [job] = this.queue.splice(this.nextTask(), 1);
      this.start(job as Job);
    }
  }

  /**
   * The queued task to start next: of the tree with the fewest tasks running, then the one
   * served longest ago, its oldest. Taken in the order of submission, one tree's 64 queued
   * tasks (each up to maxRuntimeMs) held the kernel's shared workers ahead of every other
   * tree's for hours; now another tree's task waits for the next free worker.
   */
  private nextTask(): number {
    const running = new Map<string, number>();
    for (const r of this.running.values())
      if (r.op.kind === "task") {
        const root = this.roots.of(r.op.persona);
        running.set(root, (running.get(root) ?? 0) + 1);
      }
    let best = 0;
    let bestKey: [number, number] | undefined;
    for (let i = 0; i < this.queue.length; i++) {
      const root = this.roots.of((this.queue[i] as Job).op.persona);
      const key: [number, number] = [running.get(root) ?? 0, this.served.get(root) ?? -1];
      if (!bestKey || key[0] < bestKey[0] || (key[0] === bestKey[0] && key[1] < bestKey[1])) {
        best = i;
        bestKey = key;
      }
    }
    const root = this.roots.of((this.queue[best] as Job).op.persona);
    // Forgotten wholesale past a bound (turns start again equal): never more than the trees seen lately.
    if (this.served.size >= 10_000) this.served.clear();
    this.served.set(root, this.turn++);
    return best;
  }

  /** When each persona tree last had a task started (a turn number), for {@link nextTask}. */
  private readonly served = new Map<string, number>();
  private turn = 0;
  /** Tasks given to workers so far: a worker's {@link PooledWorker.used}. */
  private uses = 0;

  /** Whether a task could start now: fewer than `workers` running one. */
  private hasRoom(): boolean {
    let busy = 0;
    for (const w of this.pool) if (w.busy !== undefined) busy++;
    return busy < this.opts.workers;
  }

  /** Workers alive at most: `workers` running and the idle ones kept, each its persona's. */
  private get maxPool(): number {
    return this.opts.workers + (this.opts.idleWorkers ?? 2);
  }

  /**
   * The worker for a task of `persona` ({@link hasRoom} said there is one): an idle one that ran
   * only its tasks or none, else a new one — in place of an idle worker (its own tree's first) when
   * the pool is full. A worker shared across personas carried one persona's task's leftovers into
   * another's: its module-scope cache (another persona's data read back), a prototype its input
   * steered the embedder's code to change (another's results wrong), a timer left spinning (the
   * next task, another persona's, stuck until its deadline and failed RESOURCE for it).
   */
  private workerFor(persona: string): PooledWorker {
    const idle = this.pool.filter((w) => w.busy === undefined);
    const own = idle.find((w) => w.owner?.persona === persona) ?? idle.find((w) => w.owner === undefined);
    if (own && this.spunIdle(own)) {
      this.endIdle(own, "spinning");
      return this.workerFor(persona);
    }
    if (own) return own;
    if (this.pool.length >= this.maxPool) {
      // hasRoom: fewer than `workers` busy, so more than idleWorkers idle — the one used longest ago
      // goes, of the persona's own tree first: a tree taking turns under several persona ids (its
      // sub-personas, its agents) otherwise ended every other tree's warm worker, one new id a task.
      const tree = this.roots.of(persona);
      const ours = idle.filter((w) => w.owner !== undefined && this.roots.of(w.owner.persona) === tree);
      const from = ours.length > 0 ? ours : idle;
      let other = from[0] as PooledWorker;
      for (const w of from) if (w.used < other.used) other = w;
      this.endIdle(other, "evicted");
    }
    return this.newWorker();
  }

  /**
   * Whether an idle worker's event loop was busy more than half the time since its last task ended,
   * for {@link IDLE_SPUN_MIN_MS} at least: a task's leftover spinning. The ticks' rule
   * ({@link endSpinningIdle}) judges a worker idle through two ticks, and each task starts its
   * judging again: a persona whose tasks came more often than that (one each 2.5 s, the default
   * tick) kept a leftover burning a core between them for ever, outside every deadline and beside
   * the `workers` that bound the tasks running.
   */
  private spunIdle(w: PooledWorker): boolean {
    if (w.endedAt === undefined) return false;
    const since = w.worker.performance.eventLoopUtilization(w.endedAt);
    if (since.utilization <= 0.5 || since.active < IDLE_SPUN_MIN_MS) return false;
    this.log.warn(
      { persona: w.owner?.persona, utilization: since.utilization, busyMs: Math.round(since.active) },
      "a task worker kept its thread busy since its last task: ended",
    );
    return true;
  }

  /** Told of each idle worker the engine ends, and why (the kernel's metrics). */
  onIdleEnded: ((reason: IdleEnd) => void) | undefined;

  /** Ends an idle worker: out of the pool first, so its exit is no task's end, nor logged as a crash. */
  private endIdle(w: PooledWorker, reason: IdleEnd): void {
    this.pool.splice(this.pool.indexOf(w), 1);
    void w.worker.terminate();
    this.onIdleEnded?.(reason);
  }

  /**
   * Ends idle workers whose event loop was busy more than half the time since last looked at (the
   * housekeeping tick), or a second in all within a minute's window (idle-workers.ts): a task's
   * leftover — a timer or `setImmediate` loop its input steered the embedder's code to leave —
   * spinning a core after its task returned, outside any task's deadline, in a worker kept warm
   * for its persona. Answers how many were ended.
   */
  endSpinningIdle(at = Date.now()): number {
    let n = 0;
    for (const w of [...this.pool]) {
      // A busy worker's baseline was cleared when its task started (runTask): idle time counts from the next tick.
      if (w.busy !== undefined) continue;
      const now = w.worker.performance.eventLoopUtilization();
      const since = w.elu === undefined ? undefined : w.worker.performance.eventLoopUtilization(now, w.elu);
      w.elu = now;
      if (since === undefined) continue;
      // Summed too: a leftover busy under half of every tick (30 ms of each 100) never met the half
      // rule and burned that share of a core for as long as the worker was kept (case 628).
      // Within a window, not since its last task: a worker warm for hours summed its collections past the bound.
      w.idleBusy = idleBusyAdd(w.idleBusy, since.active, at);
      if (since.utilization > 0.5 || w.idleBusy.over) {
        this.log.warn(
          { persona: w.owner?.persona, utilization: since.utilization, idleBusyMs: Math.round(w.idleBusy.ms) },
          "an idle task worker kept its thread busy: ended",
        );
        this.endIdle(w, "spinning");
        n++;
      }
    }
    return n;
  }

  /**
   * Ends idle workers idle longer than {@link ComputeOptions.idleWorkerMs} (the housekeeping
   * tick): each holds what its persona's tasks left in its heap, for as long as it is kept.
   * Answers how many were ended.
   */
  endAgedIdle(now = Date.now()): number {
    const max = this.opts.idleWorkerMs ?? IDLE_WORKER_MS;
    if (max <= 0) return 0;
    let n = 0;
    for (const w of [...this.pool])
      if (w.busy === undefined && now - w.idleSince >= max) {
        this.endIdle(w, "aged");
        n++;
      }
    return n;
  }

  /** A new worker in the pool. */
  private newWorker(): PooledWorker {
    const heap = this.opts.workerHeapMb ?? 0;
    const worker = new Worker(
      new URL("./worker.js", import.meta.url),
      heap > 0 ? { resourceLimits: { maxOldGenerationSizeMb: heap } } : {},
    );
    const w: PooledWorker = { worker, busy: undefined, ran: 0, used: 0, idleSince: Date.now() };
    w.worker.unref();
    // Listened to for the worker's whole life, not only while a task runs: an exception a task
    // left behind (a timer's, thrown after it returned) killed the worker between tasks with no
    // 'error' listener, which ended the kernel; and a worker that exited (a task's process.exit)
    // stayed in the pool, its task and the next ones waiting there for their deadlines.
    // The death is handled at 'exit', which Node emits after the messages the worker posted:
    // 'error' comes on another port, unordered against them, so a task whose result was already
    // posted was failed INTERNAL (or, in a reused worker, run again) when the error came first.
    let crashed = false;
    w.worker.on("error", (e: Error) => {
      if ((e as { code?: string }).code === "ERR_WORKER_OUT_OF_MEMORY") {
        w.outOfMemory = true;
        this.log.warn({ op: w.busy, heapMb: heap }, "a task worker ran out of memory");
        this.workerDied(w, `task worker ran out of memory (computeWorkerHeapMb ${heap})`);
        return;
      }
      // Its message is not the op's: the exception may be another task's, left behind (another
      // persona's text in this persona's answer). The kernel's log has it.
      this.log.warn({ err: e, op: w.busy }, "a task worker crashed");
      crashed = true;
    });
    w.worker.on("exit", (code: number) =>
      this.workerDied(w, crashed ? "task worker crashed (the kernel's log says why)" : `task worker exited (code ${code})`),
    );
    this.pool.push(w);
    return w;
  }

  /** A pooled worker ended (crashed, exited, or terminated by the kernel): out of the pool, its running task failed. */
  private workerDied(w: PooledWorker, why: string): void {
    const i = this.pool.indexOf(w);
    if (i >= 0) this.pool.splice(i, 1);
    const died = w.died;
    w.died = undefined;
    if (died) died(why);
    else if (i >= 0 && !this.stopped) this.log.warn({ why }, "an idle task worker ended: a new one takes the next task");
  }

  /**
   * Updates an op's row; a change refused room is kept for later ({@link kept}: answers true),
   * any other failure logged as `what`.
   */
  private save(op: OpRecord, f: Partial<OpRecord>, what: string, end = false): boolean {
    try {
      return !this.kept.write(
        op.id,
        f,
        (v) => this.store.updateOp(op.id, v, end),
        (kept, next) => ({ ...kept, ...next }),
        this.roots.of(op.persona),
      );
    } catch (e) {
      this.log.error({ err: e, op: op.id }, what);
      return false;
    }
  }

  /** Stores the op changes a full disk kept back, in order, until one is refused again (the housekeeping tick). */
  storeKept(): void {
    this.kept.flush(
      (id, f) => this.store.updateOp(id, f),
      (e, id) => this.log.error({ err: e, op: id }, "cannot record op state"),
    );
    for (const [root, ids] of this.keptEnds) {
      for (const id of ids) if (this.kept.get(id) === undefined) ids.delete(id);
      if (ids.size === 0) this.keptEnds.delete(root);
    }
  }

  /**
   * The ops whose end a full disk kept, by their tree's root: results not yet read, as the store
   * will count them once stored — admitPending counts them meanwhile (a lookup per submit, not a
   * scan), or a tree's ops ending one after another on a full disk were kept in memory without bound.
   */
  private readonly keptEnds = new Map<string, Set<string>>();

  /** How many op changes wait for room. */
  get keptCount(): number {
    return this.kept.size;
  }

  /** `op` (a row from the store) as it is: with what a full disk kept from its row. */
  current<T extends { id: string }>(op: T): T {
    const f = this.kept.get(op.id);
    return f ? { ...op, ...f } : op;
  }

  private start(job: Job): void {
    const op = job.op;
    this.clearQueuedTimer(op.id);
    // Its deadline passed while it waited (its timer not yet run): it ends without executing (PROTOCOL §7.5).
    if (op.deadline !== null && op.deadline <= Date.now() && op.kind === "task") {
      this.finishUnstarted(job);
      return;
    }
    op.state = "running";
    op.startedAt = Date.now();
    this.save(op, { state: "running", startedAt: op.startedAt }, "cannot record op start");
    this.host.recordState?.(op, "running", "created");
    const remaining = Math.max(0, (op.deadline ?? Number.POSITIVE_INFINITY) - Date.now());
    if (op.kind === "command") this.runCommand(job, remaining, job.command ?? { grant: undefined, network: false });
    else this.runTask(job, remaining);
  }

  /** The command's process on its op's row, for the start after a kill to end it ({@link recover}). */
  private noteProcess(id: string, pid: number | undefined): void {
    if (!pid) return;
    try {
      this.store.setOpProcess(id, pid, processIdentity(pid) ?? null);
    } catch (e) {
      // A full disk: the op runs; only a kill before its end would leave its process unended.
      this.log.error({ err: e, op: id, pid }, "cannot record a command's process");
    }
  }

  private runCommand(job: Job, remainingMs: number, cg: CommandGrant): void {
    const { op, args } = job;
    const argv = Array.isArray(args) ? (args as string[]) : [];
    const { sandbox, processes } = this.host;
    let launch: Launch | undefined;
    let child: ChildProcess;
    try {
      // Never a shell: the command and each argument are passed to exec as they are, in the sandbox.
      launch = sandbox.launch({
        executable: op.name,
        args: argv,
        // KPIP_SPAWN: tells its group the kernel's after a kill, its leader gone (stillOwnGroup).
        env: { PATH: sandbox.programPath(), HOME: "/scratch", TMPDIR: "/tmp", [SPAWN_ENV]: op.id },
        network: cg.network,
        limits: sandbox.limitsFor(cg.grant?.limits),
        extra: [],
        owner: this.roots.of(op.persona),
      });
      child = spawn(launch.file, launch.args, launch.options);
      launch.spawned(child);
      closePipesAfterExit(child);
      this.noteProcess(op.id, child.pid);
    } catch (e) {
      void launch?.cleanup();
      const why = launchFailure(e, (err) => this.log.warn({ err, op: op.id }, "command not started"));
      this.finish(op, "failed", null, why.errorClass, `cannot run ${op.name}: ${why.message}`);
      return;
    }
    const scratch = launch;
    const release = this.host.hold(op.persona);
    const out = { stdout: new OutputCapture(this.opts.maxOutputBytes), stderr: new OutputCapture(this.opts.maxOutputBytes) };
    child.stdout?.on("data", (d: Buffer) => out.stdout.push(d));
    child.stderr?.on("data", (d: Buffer) => out.stderr.push(d));
    // What comes past the captured bytes is discarded, and read no faster than a bounded rate.
    throttlePastCapture(child.stdout, this.opts.maxOutputBytes);
    throttlePastCapture(child.stderr, this.opts.maxOutputBytes);
    let ended: StopReason | undefined;
    const kill = (why: StopReason): boolean => {
      // Exited by itself, its last output still being read: it ends as it did, and its pid,
      // reaped, may be another process's by now (never signalled).
      if (exitedBefore(child)) return false;
      const first = ended === undefined;
      ended ??= why;
      killSandbox(child.pid, this.host.sandbox.mode === "bwrap");
      return first;
    };
    const timer = setTimeout(() => kill("deadline"), remainingMs);
    const closed = new Promise<void>((r) => child.once("close", () => r()));
    this.running.set(op.id, { id: op.id, op, grant: job.grant, cancel: kill, closed });
    const slot = processes.add({ kind: "command", id: op.id, persona: op.persona, kill: () => kill("removed") });
    let spawnError: Error | undefined;
    child.once("error", (e) => {
      spawnError = e;
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      this.running.delete(op.id);
      slot.ended();
      release();
      // In the background (never rejects): whatever the command left there, the result is not
      // held up; its process slot is, until the directory is gone (ProcessSlot), done or failed.
      void scratch.cleanup().finally(() => slot.release());
      const result = {
        // A spawn that failed after it returned is a negative errno from Node: no exit code (PROTOCOL: uint).
        exitCode: code !== null && code >= 0 ? code : null,
        signal: signal ?? null,
        stdout: out.stdout.bytes(),
        stderr: out.stderr.bytes(),
        truncated: out.stdout.truncated || out.stderr.truncated,
      };
      if (ended === "cancelled") this.finish(op, "cancelled", result, "SEMANTIC", "cancelled by the persona");
      else if (ended === "revoked") this.finish(op, "cancelled", result, "CAPABILITY", revokedMessage(job.grant));
      else if (ended === "retired") this.finish(op, "cancelled", result, "CAPABILITY", retiredMessage(job.grant));
      else if (ended === "deadline" && job.expiresWithGrant)
        this.finish(op, "failed", result, "CAPABILITY", expiredMessage(job.grant, "the command was killed"));
      else if (ended === "deadline") this.finish(op, "failed", result, "RESOURCE", "deadline exceeded: the command was killed");
      else if (ended === "removed")
        this.finish(op, "failed", result, "PERMISSION", "killed: the persona that started it was removed");
      else if (spawnError && this.host.sandbox.mode === "bwrap") {
        // The program the kernel spawned is bubblewrap: its failure is the host's (its message names host paths).
        this.log.warn({ err: spawnError, op: op.id }, "command not started: the sandbox could not be spawned");
        this.finish(
          op,
          "failed",
          null,
          "INTERNAL",
          `cannot run ${op.name}: the kernel could not prepare its sandbox (the kernel's log says why)`,
        );
      } else if (spawnError) this.finish(op, "failed", null, "SEMANTIC", `cannot run ${op.name}: ${spawnError.message}`);
      else if (code !== 0) this.finish(op, "failed", result, "SEMANTIC", `${op.name} exited with ${code ?? signal}`);
      else this.finish(op, "succeeded", result);
      this.pump();
    });
  }

  private runTask(job: Job, remainingMs: number, fresh?: PooledWorker): void {
    const { op, args } = job;
    const task = this.tasks.get(op.name);
    if (!task) {
      this.finish(op, "failed", null, "SEMANTIC", `no task ${op.name}`);
      return;
    }
    let w: PooledWorker;
    try {
      w = fresh ?? this.workerFor(op.persona);
    } catch (e) {
      // No thread for it (Node throws ERR_WORKER_INIT_FAILED at the process's thread limit): it
      // fails now. Thrown on, it left the op 'running' in no queue and no worker, its slot and
      // input bytes held for good — and out of a worker's 'message' handler it ended the kernel.
      this.workerNotStarted(op, e);
      return;
    }
    w.busy = op.id;
    w.used = ++this.uses;
    // What its idle time is judged by starts again once this task returns: its run is not a leftover's.
    w.elu = undefined;
    w.idleBusy = undefined;
    // Since its persona's first task there: a registration of the id made later is another holder's (cancelOf).
    if (w.owner?.persona !== op.persona) w.owner = { persona: op.persona, since: op.createdAt };
    // A reused worker's end may be an earlier task's doing (its timer's process.exit or exception,
    // its persona's earlier task's): such a task runs again, once, on a new worker; an end there is its own.
    const reused = w.ran++ > 0;
    let settled = false;
    /** Settles the task's hold on its worker: its timer, listener and running entry. */
    const detach = () => {
      settled = true;
      clearTimeout(timer);
      w.worker.off("message", onMessage);
      w.died = undefined;
      this.running.delete(op.id);
    };
    /**
     * The task ended; `stuck`: its worker, stuck in it, cannot be interrupted and is terminated and
     * replaced — out of the pool before the next task is taken, or the pump gave the next queued
     * task (any persona's) to the worker being terminated, where it waited for its deadline. The
     * caller finishes the op, then pumps: the next task's start is on the record after this end.
     */
    const free = (stuck = false) => {
      detach();
      if (stuck) {
        void w.worker.terminate();
        const i = this.pool.indexOf(w);
        if (i >= 0) this.pool.splice(i, 1);
      } else {
        w.busy = undefined;
        w.endedAt = w.worker.performance.eventLoopUtilization();
        w.idleSince = Date.now();
      }
    };
    const onMessage = (m: { id: string; ok: boolean; result?: Uint8Array; message?: string; errorClass?: string }) => {
      if (m.id !== op.id || settled) return;
      free();
      // Encoded, bounded and checked in the worker (worker.ts): stored as it came.
      if (m.ok) this.finish(op, "succeeded", null, undefined, undefined, m.result);
      else this.finish(op, "failed", null, isErrorClass(m.errorClass) ? m.errorClass : "SEMANTIC", m.message ?? "task failed");
      this.pump();
    };
    const onDied = (why: string) => {
      if (settled) return;
      // Out of memory is the task's own doing (its input, its code): it fails RESOURCE, not run
      // again to fill a second worker's heap.
      if (reused && !w.outOfMemory && !this.stopped && this.pool.length < this.maxPool) {
        // Detached without giving the (dead) worker's place to the queue first.
        detach();
        const remaining = (op.deadline ?? Number.POSITIVE_INFINITY) - Date.now();
        if (remaining > 0) {
          let again: PooledWorker;
          try {
            again = this.newWorker();
          } catch (e) {
            this.workerNotStarted(op, e);
            this.pump();
            return;
          }
          this.runTask(job, remaining, again);
          return;
        }
        // Its deadline passed as its worker died (the deadline's timer not yet run): it ends as
        // the deadline ends it, not posted to a new worker only to be stopped there at once.
        this.finishAtDeadline(job, "its worker ended as its deadline passed; not run again");
        this.pump();
        return;
      }
      free(true);
      this.finish(op, "failed", null, w.outOfMemory ? "RESOURCE" : "INTERNAL", why);
      this.pump();
    };
    const cancel = (why: StopReason): boolean => {
      if (settled) return false;
      free(true);
      if (why === "cancelled") this.finish(op, "cancelled", null, "SEMANTIC", "cancelled by the persona");
      else if (why === "revoked") this.finish(op, "cancelled", null, "CAPABILITY", revokedMessage(job.grant));
      else if (why === "retired") this.finish(op, "cancelled", null, "CAPABILITY", retiredMessage(job.grant));
      else if (why === "removed")
        this.finish(op, "failed", null, "PERMISSION", "killed: the persona that started it was removed");
      else this.finishAtDeadline(job, "the task was stopped");
      this.pump();
      return true;
    };
    const timer = setTimeout(() => cancel("deadline"), remainingMs);
    this.running.set(op.id, { id: op.id, op, grant: job.grant, cancel });
    w.worker.on("message", onMessage);
    w.died = onDied;
    w.worker.postMessage({
      id: op.id,
      module: task.module,
      export: task.export,
      args,
      // As a command's result holds its two streams' captures at most.
      maxResultBytes: 2 * this.opts.maxOutputBytes,
    });
  }

  /** A started task no worker could be started for: FAILED, class INTERNAL (the kernel's log says why). */
  private workerNotStarted(op: OpRecord, e: unknown): void {
    this.log.error({ err: e, op: op.id }, "cannot start a task worker");
    this.finish(op, "failed", null, "INTERNAL", "cannot start a task worker (the kernel's log says why)");
  }

  /** A started task's deadline ended it: RESOURCE, or CAPABILITY when the deadline was its grant's expiry. */
  private finishAtDeadline(job: Job, what: string): void {
    if (job.expiresWithGrant) this.finish(job.op, "failed", null, "CAPABILITY", expiredMessage(job.grant, what));
    else this.finish(job.op, "failed", null, "RESOURCE", `deadline exceeded: ${what}`);
  }

  private finish(
    op: OpRecord,
    state: OpRecord["state"],
    result: CborValue,
    errorClass?: string,
    message?: string,
    /** The result already encoded (a task's, by its worker). */
    encoded?: Uint8Array,
  ): void {
    if (op.finishedAt !== null) return;
    this.clearQueuedTimer(op.id);
    const hold = this.taskHolds.get(op.id);
    if (hold) {
      this.taskHolds.delete(op.id);
      this.heldInputBytes -= hold.inputBytes;
      const left = (this.treeInputBytes.get(hold.tree) ?? 0) - hold.inputBytes;
      if (left > 0) this.treeInputBytes.set(hold.tree, left);
      else this.treeInputBytes.delete(hold.tree);
      hold.release();
    }
    const from = auditState(op.state);
    let bytes: Uint8Array | null = encoded ?? null;
    if (bytes === null && result !== null && result !== undefined) {
      try {
        bytes = encodeCanonical(result);
      } catch (e) {
        state = "failed";
        errorClass = "SEMANTIC";
        message = `the task's result is not encodable: ${(e as Error).message}`;
      }
    }
    const f: Partial<OpRecord> = {
      state,
      result: bytes,
      errorClass: errorClass ?? null,
      message: message ?? null,
      finishedAt: Date.now(),
    };
    if (this.stopped) {
      // A clean stop fails what was in progress now, as a crash would at the next start.
      f.state = "failed";
      f.errorClass = "INTERNAL";
      f.message = "the kernel stopped while the op was running";
    }
    Object.assign(op, f);
    if (this.save(op, f, "cannot record op outcome", true)) {
      const root = this.roots.of(op.persona);
      const ids = this.keptEnds.get(root);
      if (ids) ids.add(op.id);
      else this.keptEnds.set(root, new Set([op.id]));
    }
    try {
      // Each finished op keeps its result (up to 2 × maxOutputBytes) until its TTL: a persona's
      // whole tree keeps a bounded number, as for ended agents, however fast it submits.
      this.store.trimFinishedOps(
        this.roots.of(op.persona),
        this.opts.maxFinishedPerPersona,
        Date.now() - this.opts.resultGraceMs,
      );
    } catch (e) {
      this.log.error({ err: e, op: op.id }, "cannot forget older finished ops");
    }
    this.host.recordState?.(op, this.stopped ? "interrupted" : auditState(op.state), from, () => this.endRecorded(op.id));
    this.emitDone(op);
  }

  private clearQueuedTimer(id: string): void {
    const timer = this.queuedTimers.get(id);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.queuedTimers.delete(id);
  }

  /** An op's end record committed: a later start has nothing of its end to record. */
  private endRecorded(id: string): void {
    try {
      this.store.opEndRecorded(id);
    } catch (e) {
      // Left marked: only a start after a kill records it again (a second record, never none).
      this.log.error({ err: e, op: id }, "cannot note an op's end as recorded");
    }
  }

  private emitDone(op: OpRecord): void {
    const data: Record<string, CborValue> = { op: `op://${op.id}`, state: op.state };
    if (op.errorClass) data.errorClass = op.errorClass;
    emitKernelEvent(this.events, "ops", op.persona, op.id, data, op.createdAt);
  }

  /** Kernel stop: running commands are killed, workers terminated, and unfinished ops recorded FAILED/INTERNAL. */
  async stop(): Promise<void> {
    this.stopped = true;
    const closing: Promise<void>[] = [];
    for (const r of [...this.running.values()]) {
      this.finish(r.op, "failed", null);
      r.cancel("cancelled");
      if (r.closed) closing.push(r.closed);
    }
    // Killing a sandbox ends its whole tree at once; wait for it, boundedly, so nothing outlives the kernel.
    await Promise.race([Promise.all(closing), new Promise((r) => setTimeout(r, 5000).unref())]);
    for (const j of this.queue.splice(0)) this.finish(j.op, "failed", null);
    await Promise.all(this.pool.map((w) => w.worker.terminate()));
    this.pool.length = 0;
    // Room since the last tick: the outcomes stored now, else the next start fails them as interrupted (their records say how they ended).
    this.storeKept();
  }
}

/** An op's outcome when a revocation covering its authorizing grant cancelled it. */
function revokedMessage(g: Grant | undefined): string {
  return `cancelled: the token that authorized it (${g ? tokenRef(g) : "?"}) was revoked`;
}

/** An op's outcome when the key its authorizing grant's token was signed with was retired. */
function retiredMessage(g: Grant | undefined): string {
  return `cancelled: the token that authorized it (${g ? tokenRef(g) : "?"}) was signed with a root key since retired`;
}

/** An op's outcome when it reached its deadline, its authorizing grant's expiry. */
function expiredMessage(g: Grant | undefined, what: string): string {
  return `deadline exceeded: the token that authorized it (${g ? tokenRef(g) : "?"}) expired; ${what}`;
}

/**
 * Ends what is left of a command's process group after a kill (its pid leads the group: the
 * spawn is detached), as AgentManager.recover does an agent's: only while the group is still the
 * one spawned, never a process that merely has its pid now.
 */
function endLeftProcess(p: { id: string; pid: number; procId: string | null }, log: Logger): boolean {
  if (p.procId === null) {
    log.warn({ op: p.id, pid: p.pid }, "command recorded without a process identity: its pid is not signalled");
    return false;
  }
  if (!stillOwnGroup(p.pid, p.procId, p.id)) return false;
  try {
    process.kill(-p.pid, "SIGKILL");
    log.warn({ op: p.id, pid: p.pid }, "a command's processes outlived the previous kernel: killed");
    return true;
  } catch {
    // already gone
    return false;
  }
}
