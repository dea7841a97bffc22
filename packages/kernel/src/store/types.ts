/**
 * Store interfaces. The kernel and its primitives see only these; SQLite is the embedded
 * implementation and a server database can replace it (docs/architecture.md), so nothing here may
 * assume SQLite.
 */

export interface PersonaRecord {
  id: string;
  publicKey: Uint8Array;
  createdAt: number;
}

export interface PersonaStore {
  getPersona(id: string): PersonaRecord | undefined;
  /** Adds a persona; `registeredBy`: the persona whose persona.register added it (none: the kernel or an operator). */
  addPersona(id: string, publicKey: Uint8Array, registeredBy?: string): void;
  removePersona(id: string): boolean;
  listPersonas(): PersonaRecord[];
  /** `id` and the personas under it (`id/…`), in id order; those after id `after`, at most `limit` (-1: all). */
  personasUnder(id: string, after?: string, limit?: number): PersonaRecord[];
  /**
   * Who registered `id`: the persona whose persona.register added it, null when the kernel or an
   * operator did (the admin persona, `kpip persona add`, an agent's key), undefined when `id` is
   * not registered.
   */
  registrarOf(id: string): string | null | undefined;
  /**
   * The personas registered (persona.register) by `id` or by any id under it — registered still
   * or not: an ended agent's key, a removed sub-persona's — in id order.
   */
  registeredWithin(id: string): string[];
  /** The personas persona.register of `id` itself added (not of a persona under it), in id order. */
  registeredBy(id: string): string[];
  /** How many registered personas were added by persona.register of `id` or a persona under it. */
  countRegisteredWithin(id: string): number;
  /**
   * Calls `cb` on each change of the registry: with the persona's id after this store added or
   * removed it, with undefined when told of changes made without it ({@link registryChangedElsewhere}).
   */
  onRegistryChange(cb: (id: string | undefined) => void): void;
  /** The registry may have changed without this store (another process on the home database): tells each {@link onRegistryChange} callback. */
  registryChangedElsewhere(): void;
}

export interface StoredObject {
  workspace: string;
  path: string;
  /** The persona whose quota the object counts against (its last writer). */
  owner: string;
  /** The body when it is kept inline (small objects, and every object of a home made before the file store); empty otherwise. */
  data: Uint8Array;
  /** The SHA-256 naming the body in the object file store, or null when the body is inline. */
  hash: Uint8Array | null;
  generation: number;
  size: number;
  updatedAt: number;
}

export type ObjectMeta = Omit<StoredObject, "data" | "hash">;

/** An object's body as the store keeps it: inline bytes, or a reference to a body in the file store. */
export type ObjectBody = { data: Uint8Array } | { hash: Uint8Array; size: number };

/** What an object was before a write or delete changed it (its bytes leave its owner's usage; its body may become garbage). */
export interface PreviousObject {
  size: number;
  owner: string;
  hash: Uint8Array | null;
}

/** Result of a compare-and-set write or delete. */
export type CasResult = { ok: true; generation: number; previous?: PreviousObject | undefined } | { ok: false; current: number };

export interface ObjectStore {
  readObject(workspace: string, path: string): StoredObject | undefined;
  statObject(workspace: string, path: string): ObjectMeta | undefined;
  /**
   * `ifGeneration`: 0 = must not exist, n = must be at generation n, undefined = unconditional.
   * A path's generations never repeat: written again after a delete, it continues after the
   * generation it was deleted at.
   */
  writeObject(
    workspace: string,
    path: string,
    body: ObjectBody,
    ifGeneration: number | undefined,
    now: number,
    owner: string,
  ): CasResult;
  /** How many objects name the body `hash` in the file store (a body is garbage at 0). */
  countBodyRefs(hash: Uint8Array): number;
  /** One object naming the body `hash` (its size is the body's), or undefined when none does. */
  objectNaming(hash: Uint8Array): { workspace: string; path: string; size: number } | undefined;
  /** How many distinct bodies in the file store objects name. */
  countBodies(): number;
  /** Every body objects name, once each, with one object naming it. */
  namedBodies(): Iterable<{ hash: Buffer; workspace: string; path: string; size: number }>;
  /** Runs `fn` atomically (object change and ledger change commit together). */
  transaction<T>(fn: () => T): T;
  /**
   * Runs `fn` as part of the transaction already open (no savepoint of its own), or in a
   * transaction of its own when none is. Only for a caller whose error, thrown, ends the open
   * transaction too (rolled back: nothing between catches it), as an effect run by
   * `ctx.atomically` does: the savepoint would only undo what that rollback undoes anyway.
   */
  partOfTransaction<T>(fn: () => T): T;
  deleteObject(workspace: string, path: string, ifGeneration: number | undefined): CasResult | undefined;
  /** Objects whose path starts with `prefix`, in path order, after `after`. */
  listObjects(workspace: string, prefix: string, after: string | undefined, limit: number): ObjectMeta[];
}

/** One audit record as stored, with its place in the hash chain. */
export interface AuditRow {
  seq: number;
  time: number;
  kernel: string;
  session: string;
  persona: string;
  phase: AuditPhase;
  requestId: number | null;
  op: string | null;
  target: string | null;
  intentHash: Uint8Array | null;
  intent: Uint8Array | null;
  caps: string | null;
  status: string | null;
  errorClass: string | null;
  message: string | null;
  durationUs: number | null;
  traceparent: string | null;
  /** The request's context.execution (the persona runtime's task or run id). */
  execution: string | null;
  /** The request's context.domain (the security domain it claimed; domain-scoped tokens decide on it). */
  domain: string | null;
  /** session.open: the ATTEST measurements, canonical CBOR of the map as sent. */
  measurements: Uint8Array | null;
  /**
   * What the record is about beyond its other fields, as compact JSON (an object, keys sorted): a
   * minted token, an op's state change, the ids a response created (docs/audit.md).
   */
  detail?: string | null;
  prevHash: Uint8Array;
  hash: Uint8Array;
  /** The exact bytes `hash` covers (recordBytes), when already encoded: the store keeps these. */
  record?: Uint8Array;
}

/**
 * intent/outcome: an op with effects, before and after; complete: a read-only op; refused;
 * replay: a retry answered from the dedupe record (nothing ran again); session: open, close,
 * errors; offline: an administrative change made without the kernel (from the offline journal);
 * kernel: an act of the kernel itself (start and stop, op state changes, agent lifecycle, tokens
 * it revokes, derived tokens first used).
 */
export type AuditPhase = "intent" | "outcome" | "complete" | "refused" | "replay" | "session" | "offline" | "kernel";

export interface AuditCheckpoint {
  seq: number;
  hash: Uint8Array;
  time: number;
  kernel: string;
  publicKey: Uint8Array;
  signature: Uint8Array;
}

export interface AuditQuery {
  persona?: string;
  op?: string;
  status?: string;
  since?: number;
  afterSeq?: number;
  limit?: number;
}

/** A final response kept for the dedupe window, so a retry after a kernel restart is not executed twice. */
export interface DedupeRow {
  key: string;
  hash: Uint8Array;
  /** The response as canonical CBOR. */
  response: Uint8Array;
  expires: number;
  /**
   * For an answer committed with its op's effect (`atomically`): the request's intent record, and
   * the log's head when the effect committed (the outcome comes after it). What a start after a
   * kill needs to put an effect whose outcome record was never written on the record
   * (audit/recover-outcomes.ts). Kept for the row's life (cleared only by that start, once it
   * wrote the record). An answer kept with its outcome record has no `intentSeq`; the store
   * gives it the last record of its commit as `afterSeq` (where in the log the row was written).
   */
  intentSeq?: number;
  afterSeq?: number;
  /**
   * With those: the outcome record's detail as the op made it (what it ended, what it created),
   * and the token ids it revoked (OpResult.revoked), which that start's record carries too.
   */
  detail?: string;
  revoked?: readonly string[];
}

/**
 * An answer committed with its effect ({@link DedupeRow} `intentSeq` set) as a start's walk finds
 * it: where it is on the log. Its answer is read ({@link EffectAnswer}) only for an effect whose
 * outcome record is missing: the walk reads every such row of the window.
 */
export interface EffectAnswerRef {
  key: string;
  intentSeq: number;
  afterSeq: number;
}

/** That answer, for a start's recovery of its outcome record. */
export interface EffectAnswer extends EffectAnswerRef {
  response: Uint8Array;
  /** Absent in a row an older kernel committed. */
  detail?: string;
  revoked?: string[];
}

/**
 * What a start's search for cut-off effects reads of a record: the same values as the decoded
 * record's (record-decode.ts decodeRecordHead), without decoding the rest.
 */
export type RecordHead = Pick<AuditRow, "seq" | "phase" | "session" | "persona" | "requestId">;

/** One administrative change made without the kernel (e.g. `kpip persona add` on the home database). */
export interface OfflineEntry {
  id: number;
  /** When it was made (ms since the epoch). */
  time: number;
  /** Who made it: the tool and the OS user. */
  actor: string;
  op: string;
  target: string;
  message: string;
}

/**
 * Commits audit rows (with the dedupe rows of their responses, and the removal of the offline
 * journal entries they record, up to `journalUpTo`) in one transaction.
 */
export interface AuditStore {
  /**
   * Records, dedupe rows, the offline journal entries they record and the checkpoints signed over
   * them, in one commit: durable when this returns. With an audit journal (store/audit-journal.ts)
   * the commit is the journal's write, and SQLite gets the batch at {@link indexAudit}; every read
   * of these tables indexes first, so no reader sees the lag.
   */
  appendAudit(rows: AuditRow[], dedupe?: DedupeRow[], journalUpTo?: number, checkpoints?: AuditCheckpoint[]): void;
  /** Moves the journalled batches into SQLite (one transaction); throws, keeping them, when it cannot. */
  indexAudit?(): void;
  /**
   * Told of every index step that failed, whoever asked for it (the log's step, or a read or a
   * dedupe lookup that indexes first): a full disk refusing the index refuses every request with
   * effects before any record of it is tried, so the kernel's "nothing can be recorded" learns it here.
   */
  onIndexFailed?: (e: unknown) => void;
  /** Records journalled and not yet indexed (0 without a journal). */
  readonly auditUnindexed?: number;
  /** The lowest sequence number in the log (records below it were pruned), or undefined when it is empty. */
  firstAuditSeq(): number | undefined;
  /**
   * Retention: removes records 1..`throughSeq` and the checkpoints below it, in one transaction.
   * `throughSeq` must be a checkpoint's — one already stored, or `base`, stored in the same
   * transaction: it stays, and anchors the pruned log.
   */
  pruneAudit(throughSeq: number, base?: AuditCheckpoint): number;
  /** Administrative changes made without the kernel, oldest first, not yet audited (at most `limit`; -1: all). */
  offlineJournal(limit?: number): OfflineEntry[];
  lookupDedupe(key: string, now: number): DedupeRow | undefined;
  /**
   * Answers committed with their effects (still naming their intent records) whose effect
   * committed after the log's record `sinceSeq`, newest first (whatever their expiry).
   */
  effectAnswersSince(sinceSeq: number): EffectAnswerRef[];
  /** That answer (undefined: no such row naming its intent). */
  effectAnswer(key: string): EffectAnswer | undefined;
  /** A start recorded those answers' outcome records (or nothing names them): plain dedupe rows again. */
  effectAnswersRecorded(keys: readonly string[]): void;
  /** Stores one dedupe row now (inside the caller's transaction, if one is open). */
  putDedupe(row: DedupeRow): void;
  /** Runs `fn` in one transaction (nested: a savepoint). */
  transaction<T>(fn: () => T): T;
  /** Deletes dedupe records expired before `now`; with `max`, only among the `max` oldest (a bounded slice). */
  pruneDedupe(now: number, max?: number): number;
  /** The newest dedupe record's rowid (0: none): where a pass over the whole table ends. */
  dedupeEnd(): number;
  /**
   * One slice of a pass over the dedupe table in rowid order: deletes the records expired before
   * `now` among the `max` after rowid `after`, up to `through`; `last` is the last rowid looked
   * at (`through` once no row is left before it).
   */
  pruneDedupeRange(now: number, after: number, through: number, max: number): { deleted: number; last: number };
  lastAudit(): AuditRow | undefined;
  /** Rows in seq order, `batch` at a time (for verification of long logs). */
  scanAudit(fromSeq: number, batch: number): AuditRow[];
  /** Each record from `fromSeq` through `toSeq`, in seq order, as its {@link RecordHead} (a start's search). */
  auditHeads(fromSeq: number, toSeq: number, visit: (h: RecordHead) => void): void;
  countAudit(): number;
  /** The hash of record `seq`, if there is one. */
  auditHashAt(seq: number): Uint8Array | undefined;
  queryAudit(q: AuditQuery): AuditRow[];
  addCheckpoint(c: AuditCheckpoint): void;
  checkpoints(): AuditCheckpoint[];
}

/** A token the kernel minted (offline attenuations share their base token's id). */
export interface TokenRecord {
  id: string;
  kid: string;
  sub: string;
  /** Ids of the tokens it was minted from, root first. */
  chain: string[];
  exp: number;
  mintedBy: string;
  createdAt: number;
  revokedAt: number | null;
  /** The id of the token this one's refreshes started from (itself for a minted token): its rate bucket. */
  family: string;
  /**
   * The token this one is a refreshed copy of, at the start of its refreshes (a minted token's
   * own id): its **refresh family**, which a revocation of any copy ends whole (PROTOCOL §13.1).
   * Rows of an older kernel have none (each is then a family of its own).
   */
  copyOf?: string;
  /**
   * The limits the tokens it was minted from hold over the personas its subject lies under (or
   * is): they bound its requests too, each over that persona's tree (resources/lineage.ts).
   */
  bounds?: TokenBound[];
  /** Listing position (paging cursor), when read by listTokens. */
  seq?: number;
}

/** A limit an ancestor token holds over `persona`'s tree. */
export interface TokenBound {
  persona: string;
  limits: Record<string, number>;
}

export interface TokenStore {
  recordToken(r: Omit<TokenRecord, "revokedAt" | "seq">): void;
  getToken(id: string): TokenRecord | undefined;
  /** Tokens in minting order after position `after`, at most `limit` (-1: all). */
  listTokens(sub?: string, after?: number, limit?: number): TokenRecord[];
  /**
   * {@link listTokens} of the tokens `tree` (a persona and every id under it) sees: those whose
   * subject, minter, or an ancestor's subject is in it. Reads only those rows.
   */
  listTokensSeenBy(tree: string, sub: string | undefined, after: number, limit: number): TokenRecord[];
  /** Whether `tree` sees token `id` (as {@link listTokensSeenBy} would list it). */
  tokenSeenBy(id: string, tree: string): boolean;
  /**
   * The ids of the unrevoked tokens minted (or refreshed) for `tree` — a persona and every id
   * under it — or by it, in minting order: what removing the tree revokes.
   */
  unrevokedTokensOfTree(tree: string): string[];
  /**
   * The ids of unexpired, unrevoked tokens minted or refreshed for an id in `tree` (its subject's,
   * not its minter's), in minting order; with no `tree`, for any id in the agent namespace.
   */
  liveTokensFor(tree: string | undefined, now: number): string[];
  /** The ids of the kernel-minted root tokens of `sub` unexpired at `now` and unrevoked, in minting order. */
  liveRootTokens(sub: string, now: number): string[];
  /**
   * Token rows `mintedBy` or any persona under it (its agents, its sub-personas) minted or
   * refreshed that the store still keeps (revoked and expired ones included).
   */
  countTokensBy(mintedBy: string): number;
  /** Removes the rows `mintedBy` or any persona under it minted or refreshed that expired before `before`; returns how many. */
  pruneTokensBy(mintedBy: string, before: number): number;
  /** Removes tokens that expired before `before` (and revocations no remaining token needs); returns how many. */
  pruneTokens(before: number): number;
  /** Marks a token revoked; false if it was already. Unknown ids are recorded too. */
  revokeToken(id: string, by: string, at: number): boolean;
  revokedTokenIds(): string[];
  /**
   * Runs `undo` if the transaction open now rolls back (a revocation's row with it: memory must
   * not keep it in force, as a restart would not); false when none is open.
   */
  onRollback(undo: () => void): boolean;
  /** Notes the audit record of a revocation; and every revocation's record, where noted. */
  noteRevocationSeq(id: string, seq: number): void;
  revocationSeqs(): [string, number][];
  /**
   * `tree` is removed from the registry: the tokens its ids saw are seen by `heir` instead (a
   * registered persona above it, so those above keep seeing them; none when absent), never by a
   * later registration under one of these ids. `alone`: `tree`'s id only, not the ids under it.
   */
  disownTokens(tree: string, heir?: string, alone?: boolean): void;
  /** Tokens whose chain names `id` (minted or refreshed from it, at any depth). */
  tokensDerivedFrom(id: string): TokenRecord[];
  /** {@link tokensDerivedFrom} of each of `ids` (those with none are absent), read in one pass. */
  tokensDerivedFromAny(ids: readonly string[]): Map<string, TokenRecord[]>;
}

/** Usage by scope ("persona:<id>" or "workspace:<id>") and resource name (e.g. "storage.bytes"). */
export interface LedgerStore {
  usage(scope: string, resource: string): number;
  usageOf(scope: string): Record<string, number>;
  /** Adds `delta` (never below 0); a row that comes to 0 is removed: absent is 0. */
  adjustUsage(scope: string, resource: string, delta: number): void;
  /** Every non-zero usage row (metrics). */
  allUsage(): { scope: string; resource: string; amount: number }[];
  addAllocation(a: Allocation): void;
  getAllocation(id: string): Allocation | undefined;
  removeAllocation(id: string): boolean;
  /** Allocations held by `root` and the personas under it (an id range, not a scan). */
  countAllocationsWithin(root: string): number;
  /** Those allocations themselves (at most maxAllocationsPerPersona for a tree other than the admin's). */
  allocationsWithin(root: string): Allocation[];
}

export interface Allocation {
  id: string;
  persona: string;
  resource: string;
  amount: number;
  createdAt: number;
}

export type OpState = "queued" | "running" | "succeeded" | "failed" | "cancelled";

/** A DEFERRED op: what was asked, where it stands, and its outcome. */
export interface OpRecord {
  id: string;
  persona: string;
  session: string;
  kind: "command" | "task";
  name: string;
  state: OpState;
  /** The result payload as canonical CBOR (succeeded ops). */
  result: Uint8Array | null;
  errorClass: string | null;
  message: string | null;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  deadline: number | null;
  /** When the record (and its result) may be forgotten. */
  expiresAt: number;
  /**
   * Which spawn of its agent persona submitted it: that agent's token id (null for a persona that
   * is no agent, and in an older home). An agent's name is reused; its ops are its spawn's alone.
   */
  spawn: string | null;
}

/** What a listing of ops shows: everything but the result. */
export type OpSummary = Omit<OpRecord, "result">;

export interface OpStore {
  insertOp(r: OpRecord): void;
  /** An op's row; with `result` false its result is not read (null). */
  getOp(id: string, result?: boolean): OpRecord | undefined;
  /** The bytes of an op's stored result, read without reading it. */
  opResultBytes(id: string): number;
  /** `endUnrecorded`: the row stores an end whose `op.state` record is still to commit ({@link opEndRecorded}). */
  updateOp(id: string, fields: Partial<OpRecord>, endUnrecorded?: boolean): void;
  /** Ended ops whose end was stored and not yet noted as recorded (the start after a kill records them). */
  unrecordedOpEnds(): string[];
  /** The op's end record committed. */
  opEndRecorded(id: string): void;
  /** The newest ops' metadata (inserted before `seq` `before`; of `persona`, and of its spawn `spawn` when given), never their results (op.result reads one op's, through getOp). */
  listOps(persona?: string, limit?: number, before?: number, spawn?: string | null): (OpSummary & { seq: number })[];
  /** Marks every op left queued or running (the kernel died under it) as failed; returns their ids. */
  /** Marks ops left queued or running FAILED/INTERNAL; returns them with the state they were in. */
  failInterruptedOps(message: string, now: number): { id: string; state: OpState }[];
  /**
   * Records the process a command's op started (its pid leads the process group) and its
   * identity (agents/process-identity.ts): a start after a kill ends what is left of it.
   */
  setOpProcess(id: string, pid: number, procId: string | null): void;
  /** The processes recorded for ops left queued or running (the kernel died under them). */
  interruptedOpProcesses(): { id: string; pid: number; procId: string | null }[];
  /** Forgets up to `limit` (default: all) finished ops that expired before `now`, with their results; returns how many. */
  pruneOps(now: number, limit?: number): number;
  /**
   * Forgets the finished ops of `root`'s persona tree (their results too) but `keep`; returns how
   * many. Kept first: results not yet handed out ({@link claimOp}) that finished at or after
   * `unreadSince`, then the newest.
   */
  trimFinishedOps(root: string, keep: number, unreadSince: number): number;
  /** op.result handed out op `id`'s outcome (its first time at `at`): it no longer holds its place against a trim. */
  claimOp(id: string, at: number): void;
  /** Finished ops of `root`'s tree whose outcome no op.result handed out yet, finished at or after `since`. */
  countUnreadOps(root: string, since: number): number;
  /**
   * `tree` is removed from the registry: the ops its registered personas submitted and the agents
   * they spawned (spawn null) are marked {@link REMOVED_SPAWN}, so a later registration under one
   * of these ids owns none of them (the admin still sees them). Agent personas' rows keep their
   * spawn: they are scoped to it already. `alone`: `tree`'s id only, not the ids under it.
   */
  disownWork(tree: string, alone?: boolean): void;
}

/**
 * The spawn (`OpRecord.spawn`, `AgentRecord.spawnerSpawn`) of what a persona submitted or spawned
 * under a registration since removed: no registered persona's (theirs is null) nor agent's (a token id).
 */
export const REMOVED_SPAWN = "removed";

export type AgentState = "running" | "exited" | "killed" | "lost";

/** An agent: a real OS process the kernel started, acting as its own persona. */
export interface AgentRecord {
  /** "<spawner>/<executable>/<instance>": agent://<executable>/<instance> of its spawner (ids are scoped to the spawner). */
  id: string;
  persona: string;
  spawner: string;
  command: string;
  args: string[];
  pid: number | null;
  state: AgentState;
  exitCode: number | null;
  signal: string | null;
  startedAt: number;
  endedAt: number | null;
  deadline: number;
  stdout: Uint8Array | null;
  stderr: Uint8Array | null;
  tokenId: string;
  cwd: string;
  /**
   * The process's identity beyond its pid ("<boot id> <pid namespace> <start time>", agents/process-identity.ts),
   * read at spawn; null when it could not be read, and for agents of an older home. Recovery after
   * a crash signals only a process that still has it: a pid may name another process by then.
   */
  procId: string | null;
  /**
   * Which spawn of its spawner spawned it, when the spawner is an agent: that agent's token id
   * (null otherwise, and in an older home). A later agent of the spawner's name does not see it.
   */
  spawnerSpawn: string | null;
}

/**
 * What a listing of agents shows: everything but the output, the row's listing position (paging
 * cursor), and the size of its arguments as stored (a page ends at a bound of them: agent.list).
 */
export type AgentSummary = Omit<AgentRecord, "stdout" | "stderr"> & { seq: number; argsBytes: number };

/**
 * A session whose `session.open` record was appended (or was about to be) and whose end is not
 * known to be on the record yet (audit/live-sessions.ts): the records' sequence numbers are
 * noted before the records are chained, so a kill at any point leaves a row that names them.
 */
export interface LiveSession {
  session: string;
  persona: string;
  /** The open record's `caps` (the tokens presented, as it names them). */
  caps: string | null;
  openSeq: number;
  /** The sequence number its session.close or session.error record was given, once appended. */
  closeSeq: number | null;
}

export interface LiveSessionStore {
  liveSessionOpened(s: Omit<LiveSession, "closeSeq">): void;
  /** Each session's end record was given this sequence number (one transaction). */
  liveSessionsEnding(ends: readonly { session: string; closeSeq: number }[]): void;
  /** Their end is on the record (committed): the rows go. */
  liveSessionsEnded(sessions: readonly string[]): void;
  /**
   * The log holds nothing after `seq` (a failed commit rewound it there, or a start found it
   * ended there): rows whose open record came after it go, and an end noted after it is unnoted.
   */
  liveSessionsAfter(seq: number): void;
  /** Every row, oldest open first: at most the sessions open at once, and those closing. */
  liveSessions(): LiveSession[];
}

/** What recovery after a crash needs of an agent recorded running. */
export type RunningAgent = Pick<AgentRecord, "id" | "persona" | "spawner" | "pid" | "tokenId" | "procId">;
/** An agent whose end was stored and whose `agent.exited` record may not have committed (a kill in between). */
export type UnrecordedAgentEnd = Pick<AgentRecord, "id" | "persona" | "spawner" | "tokenId" | "state" | "exitCode" | "signal">;

export interface AgentStore {
  putAgent(r: AgentRecord): void;
  /** One agent with its output (agent.logs). */
  /** An agent's row; with `output` false its stdout and stderr are not read (null). */
  getAgent(id: string, output?: boolean): AgentRecord | undefined;
  /** The bytes of an agent's stored output (stdout and stderr), read without reading them. */
  agentOutputBytes(id: string): number;
  /**
   * Agents (of `spawner`, and of its spawn `spawnerSpawn` when given) after listing position
   * `after`, oldest first, at most `limit`; never their output. Once the rows read hold
   * `argsBudget` bytes of arguments (each row's `argsBytes`), one more row is read and no other.
   */
  listAgents(spawner?: string, after?: number, limit?: number, spawnerSpawn?: string | null, argsBudget?: number): AgentSummary[];
  /** The agents recorded running (recovery after a crash). */
  runningAgents(): RunningAgent[];
  /** `endUnrecorded`: the row stores an end whose `agent.exited` record is still to commit ({@link agentEndRecorded}). */
  updateAgent(id: string, f: Partial<AgentRecord>, endUnrecorded?: boolean): void;
  /** Ended agents whose end was stored and not yet noted as recorded (the start after a kill records them). */
  unrecordedAgentEnds(): UnrecordedAgentEnd[];
  /** The agent's `agent.exited` record committed. */
  agentEndRecorded(id: string): void;
  /** Forgets up to `limit` agents that ended before `before`, with their output; returns how many. */
  pruneAgents(before: number, limit: number): number;
  /** Forgets the ended agents spawned by `root` or any persona under it beyond their newest `keep`, with their output; returns how many. */
  trimEndedAgents(root: string, keep: number): number;
}
