import { closeSync, fdatasyncSync, openSync } from "node:fs";
import Database from "better-sqlite3";
import { createIfAbsent } from "../secure-files.js";
import type {
  AgentRecord,
  AgentStore,
  Allocation,
  AuditCheckpoint,
  AuditQuery,
  AuditRow,
  AuditStore,
  CasResult,
  DedupeRow,
  LedgerStore,
  ObjectBody,
  ObjectMeta,
  ObjectStore,
  OfflineEntry,
  OpRecord,
  OpStore,
  PersonaRecord,
  PersonaStore,
  PreviousObject,
  StoredObject,
  TokenRecord,
  TokenStore,
} from "./types.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS personas (
  id TEXT PRIMARY KEY, public_key BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
  workspace TEXT NOT NULL, path TEXT NOT NULL, data BLOB NOT NULL, generation INTEGER NOT NULL,
  size INTEGER NOT NULL, updated_at INTEGER NOT NULL, owner TEXT NOT NULL DEFAULT '', hash BLOB, PRIMARY KEY (workspace, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (scope TEXT NOT NULL, resource TEXT NOT NULL, amount INTEGER NOT NULL, PRIMARY KEY (scope, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS allocations (id TEXT PRIMARY KEY, persona TEXT NOT NULL, resource TEXT NOT NULL, amount INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, kernel TEXT NOT NULL, session TEXT NOT NULL,
  persona TEXT NOT NULL, phase TEXT NOT NULL, request_id INTEGER, op TEXT, target TEXT,
  intent_hash BLOB, intent BLOB, caps TEXT, status TEXT, error_class TEXT, message TEXT,
  duration_us INTEGER, traceparent TEXT, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
  execution TEXT, domain TEXT, measurements BLOB, detail TEXT);
CREATE INDEX IF NOT EXISTS audit_persona ON audit (persona, seq);
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, kid TEXT NOT NULL, sub TEXT NOT NULL, chain TEXT NOT NULL, exp INTEGER NOT NULL,
  minted_by TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (id TEXT PRIMARY KEY, revoked_by TEXT NOT NULL, revoked_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, hash BLOB NOT NULL, response BLOB NOT NULL, expires INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
  id TEXT PRIMARY KEY, persona TEXT NOT NULL, session TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
  state TEXT NOT NULL, result BLOB, error_class TEXT, message TEXT, created_at INTEGER NOT NULL,
  started_at INTEGER, finished_at INTEGER, deadline INTEGER, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ops_persona ON ops (persona, created_at);
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY, persona TEXT NOT NULL, spawner TEXT NOT NULL, command TEXT NOT NULL, args TEXT NOT NULL,
  pid INTEGER, state TEXT NOT NULL, exit_code INTEGER, signal TEXT, started_at INTEGER NOT NULL, ended_at INTEGER,
  deadline INTEGER NOT NULL, stdout BLOB, stderr BLOB, token_id TEXT NOT NULL, cwd TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offline_journal (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, actor TEXT NOT NULL, op TEXT NOT NULL,
  target TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
  seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, time INTEGER NOT NULL, kernel TEXT NOT NULL,
  public_key BLOB NOT NULL, signature BLOB NOT NULL);
`;

type Row = Record<string, unknown>;
type StatementName =
  | "getPersona"
  | "addPersona"
  | "removePersona"
  | "listPersonas"
  | "readObject"
  | "statObject"
  | "genObject"
  | "upsertObject"
  | "bodyRefs"
  | "deleteObject"
  | "listObjects"
  | "appendAudit"
  | "lastAudit"
  | "scanAudit"
  | "countAudit"
  | "addCheckpoint"
  | "checkpoints";
type Statements = Record<StatementName, Database.Statement>;

/** The embedded store: one SQLite database in WAL mode holding personas, objects and the audit log. */
export class SqliteStore implements PersonaStore, ObjectStore, AuditStore, TokenStore, LedgerStore, OpStore, AgentStore {
  readonly db: Database.Database;
  private readonly st: Statements;
  private readonly appendTx: (rows: AuditRow[], dedupe: DedupeRow[], journalUpTo: number, cps: AuditCheckpoint[]) => void;

  constructor(private readonly path: string) {
    // SQLite gives the WAL and shared-memory files the database file's mode: a new database is
    // 0600 (an existing home's files are checked by the kernel before it opens them).
    if (path !== ":memory:") createIfAbsent(path);
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    // NORMAL in WAL mode survives a process kill; only an OS crash can lose the last commits.
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("busy_timeout = 5000");
    this.db.exec(SCHEMA);
    migrateTokens(this.db);
    migrateObjects(this.db);
    // Columns added after the first release: a database made before them gets them (NULL in old rows, hashed as absent).
    const have = new Set((this.db.pragma("table_info(audit)") as { name: string }[]).map((c) => c.name));
    for (const [col, type] of [
      ["execution", "TEXT"],
      ["domain", "TEXT"],
      ["measurements", "BLOB"],
      ["detail", "TEXT"],
    ]) {
      if (!have.has(col as string)) this.db.exec(`ALTER TABLE audit ADD COLUMN ${col} ${type}`);
    }
    const p = (sql: string) => this.db.prepare(sql);
    this.st = {
      getPersona: p("SELECT id, public_key, created_at FROM personas WHERE id = ?"),
      addPersona: p("INSERT INTO personas (id, public_key, created_at) VALUES (?, ?, ?)"),
      removePersona: p("DELETE FROM personas WHERE id = ?"),
      listPersonas: p("SELECT id, public_key, created_at FROM personas ORDER BY id"),
      readObject: p("SELECT * FROM objects WHERE workspace = ? AND path = ?"),
      statObject: p("SELECT workspace, path, generation, size, updated_at, owner FROM objects WHERE workspace = ? AND path = ?"),
      genObject: p("SELECT generation, size, owner, hash FROM objects WHERE workspace = ? AND path = ?"),
      upsertObject: p(
        "INSERT INTO objects (workspace, path, data, generation, size, updated_at, owner, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?) " +
          "ON CONFLICT (workspace, path) DO UPDATE SET data = excluded.data, generation = excluded.generation, " +
          "size = excluded.size, updated_at = excluded.updated_at, owner = excluded.owner, hash = excluded.hash",
      ),
      bodyRefs: p("SELECT count(*) AS n FROM objects WHERE hash = ?"),
      deleteObject: p("DELETE FROM objects WHERE workspace = ? AND path = ?"),
      listObjects: p(
        "SELECT workspace, path, generation, size, updated_at, owner FROM objects WHERE workspace = ? AND path >= ? AND path < ? AND path > ? ORDER BY path LIMIT ?",
      ),
      appendAudit: p(
        "INSERT INTO audit (seq, time, kernel, session, persona, phase, request_id, op, target, intent_hash, intent, caps, status, error_class, message, duration_us, traceparent, prev_hash, hash, execution, domain, measurements, detail) " +
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      lastAudit: p("SELECT * FROM audit ORDER BY seq DESC LIMIT 1"),
      // Raw rows (arrays): scanning is most of `audit verify`, and arrays come out of SQLite
      // almost twice as fast as objects.
      scanAudit: p(
        "SELECT seq, time, kernel, session, persona, phase, request_id, op, target, intent_hash, intent, caps, status, error_class, message, duration_us, traceparent, prev_hash, hash, execution, domain, measurements, detail FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?",
      ).raw(true),
      countAudit: p("SELECT count(*) AS n FROM audit"),
      addCheckpoint: p(
        "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, time, kernel, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      checkpoints: p("SELECT * FROM audit_checkpoints ORDER BY seq"),
    };
    const putDedupe = this.db.prepare("INSERT OR REPLACE INTO dedupe (key, hash, response, expires) VALUES (?, ?, ?, ?)");
    const dropJournal = this.db.prepare("DELETE FROM offline_journal WHERE id <= ?");
    const putCheckpoint = this.st.addCheckpoint;
    this.appendTx = this.db.transaction((rows: AuditRow[], dedupe: DedupeRow[], journalUpTo: number, cps: AuditCheckpoint[]) => {
      const s = this.st.appendAudit;
      // Positional parameters: binding by name costs a property lookup per column per row.
      for (const r of rows) {
        s.run(
          r.seq,
          r.time,
          r.kernel,
          r.session,
          r.persona,
          r.phase,
          r.requestId,
          r.op,
          r.target,
          r.intentHash,
          r.intent,
          r.caps,
          r.status,
          r.errorClass,
          r.message,
          r.durationUs,
          r.traceparent,
          r.prevHash,
          r.hash,
          r.execution,
          r.domain,
          r.measurements,
          r.detail ?? null,
        );
      }
      for (const d of dedupe) putDedupe.run(d.key, Buffer.from(d.hash), Buffer.from(d.response), d.expires);
      if (journalUpTo > 0) dropJournal.run(journalUpTo);
      for (const c of cps)
        putCheckpoint.run(c.seq, Buffer.from(c.hash), c.time, c.kernel, Buffer.from(c.publicKey), Buffer.from(c.signature));
    });
  }

  private readonly prepared = new Map<string, Database.Statement>();
  /** Statements prepared once and reused: preparing costs more than running. */
  private prep(sql: string): Database.Statement {
    let st = this.prepared.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.prepared.set(sql, st);
    }
    return st;
  }

  /** Pages in the WAL after which a commit checkpoints (0: never on commit; see WalCheckpointer). */
  setAutoCheckpoint(pages: number): void {
    if (this.db.open) this.db.pragma(`wal_autocheckpoint = ${Math.max(0, Math.floor(pages))}`);
  }

  /** Bytes the WAL file is trimmed to when SQLite starts it over. */
  setWalLimit(bytes: number): void {
    if (this.db.open) this.db.pragma(`journal_size_limit = ${Math.max(0, Math.floor(bytes))}`);
  }

  /** One PASSIVE WAL checkpoint on this connection, between transactions. */
  checkpointNow(): void {
    if (this.db.open) this.db.pragma("wal_checkpoint(PASSIVE)");
  }

  /**
   * Makes every committed transaction durable now (an fdatasync of the WAL): commits run with
   * synchronous=NORMAL, durable at the next checkpoint. For what must not outlive a rolled-back
   * commit, such as a file-store body the commit stopped naming.
   */
  syncWal(): void {
    if (this.path === ":memory:") return;
    let fd: number;
    try {
      fd = openSync(`${this.path}-wal`, "r");
    } catch {
      return; // no WAL file: every commit is in the database file already
    }
    try {
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  getMeta(key: string): string | undefined {
    const r = this.prep("SELECT value FROM meta WHERE key = ?").get(key) as Row | undefined;
    return r?.value as string | undefined;
  }

  setMeta(key: string, value: string): void {
    this.prep("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)").run(key, value);
  }

  // personas
  getPersona(id: string): PersonaRecord | undefined {
    const r = this.st.getPersona.get(id) as Row | undefined;
    return r && toPersona(r);
  }
  addPersona(id: string, publicKey: Uint8Array): void {
    this.st.addPersona.run(id, Buffer.from(publicKey), Date.now());
  }
  removePersona(id: string): boolean {
    return this.st.removePersona.run(id).changes > 0;
  }
  listPersonas(): PersonaRecord[] {
    return (this.st.listPersonas.all() as Row[]).map(toPersona);
  }

  // objects
  readObject(workspace: string, path: string): StoredObject | undefined {
    const r = this.st.readObject.get(workspace, path) as Row | undefined;
    return r && { ...toMeta(r), data: r.data as Uint8Array, hash: (r.hash as Uint8Array | null) ?? null };
  }
  statObject(workspace: string, path: string): ObjectMeta | undefined {
    const r = this.st.statObject.get(workspace, path) as Row | undefined;
    return r && toMeta(r);
  }
  writeObject(
    workspace: string,
    path: string,
    body: ObjectBody,
    ifGeneration: number | undefined,
    now: number,
    owner: string,
  ): CasResult {
    const prev = this.st.genObject.get(workspace, path) as Row | undefined;
    const current = (prev?.generation as number | undefined) ?? 0;
    if (ifGeneration !== undefined && ifGeneration !== current) return { ok: false, current };
    const generation = current + 1;
    // A body in the file store leaves an empty inline column (the column predates the file store and is NOT NULL).
    if ("data" in body) {
      const bytes = Buffer.from(body.data.buffer, body.data.byteOffset, body.data.length);
      this.st.upsertObject.run(workspace, path, bytes, generation, body.data.length, now, owner, null);
    } else this.st.upsertObject.run(workspace, path, EMPTY, generation, body.size, now, owner, Buffer.from(body.hash));
    return { ok: true, generation, previous: prev ? toPrevious(prev) : undefined };
  }
  countBodyRefs(hash: Uint8Array): number {
    return (this.st.bodyRefs.get(Buffer.from(hash)) as { n: number }).n;
  }
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }
  deleteObject(workspace: string, path: string, ifGeneration: number | undefined): CasResult | undefined {
    const prev = this.st.genObject.get(workspace, path) as Row | undefined;
    if (prev === undefined) return undefined;
    const current = prev.generation as number;
    if (ifGeneration !== undefined && ifGeneration !== current) return { ok: false, current };
    this.st.deleteObject.run(workspace, path);
    return { ok: true, generation: current, previous: toPrevious(prev) };
  }
  listObjects(workspace: string, prefix: string, after: string | undefined, limit: number): ObjectMeta[] {
    // [prefix, prefix + U+FFFF) covers every path starting with prefix in SQLite's binary collation.
    const rows = this.st.listObjects.all(workspace, prefix, `${prefix}\uffff`, after ?? "", limit) as Row[];
    return rows.map(toMeta);
  }

  // ledger
  usage(scope: string, resource: string): number {
    const r = this.prep("SELECT amount FROM usage WHERE scope = ? AND resource = ?").get(scope, resource) as Row | undefined;
    return (r?.amount as number | undefined) ?? 0;
  }
  usageOf(scope: string): Record<string, number> {
    const rows = this.prep("SELECT resource, amount FROM usage WHERE scope = ?").all(scope) as Row[];
    return Object.fromEntries(rows.map((r) => [r.resource as string, r.amount as number]));
  }
  adjustUsage(scope: string, resource: string, delta: number): void {
    if (delta === 0) return;
    this.prep(
      "INSERT INTO usage (scope, resource, amount) VALUES (?, ?, max(0, ?)) " +
        "ON CONFLICT (scope, resource) DO UPDATE SET amount = max(0, amount + ?)",
    ).run(scope, resource, delta, delta);
  }
  allUsage(): { scope: string; resource: string; amount: number }[] {
    return this.prep("SELECT scope, resource, amount FROM usage WHERE amount > 0 ORDER BY scope, resource LIMIT 10000").all() as {
      scope: string;
      resource: string;
      amount: number;
    }[];
  }
  addAllocation(a: Allocation): void {
    this.prep("INSERT INTO allocations (id, persona, resource, amount, created_at) VALUES (?, ?, ?, ?, ?)").run(
      a.id,
      a.persona,
      a.resource,
      a.amount,
      a.createdAt,
    );
  }
  getAllocation(id: string): Allocation | undefined {
    const r = this.prep("SELECT * FROM allocations WHERE id = ?").get(id) as Row | undefined;
    return (
      r && {
        id,
        persona: r.persona as string,
        resource: r.resource as string,
        amount: r.amount as number,
        createdAt: r.created_at as number,
      }
    );
  }
  removeAllocation(id: string): boolean {
    return this.prep("DELETE FROM allocations WHERE id = ?").run(id).changes > 0;
  }

  // agents
  putAgent(r: AgentRecord): void {
    this.prep(
      "INSERT OR REPLACE INTO agents (id, persona, spawner, command, args, pid, state, exit_code, signal, started_at, ended_at, deadline, stdout, stderr, token_id, cwd) " +
        "VALUES (@id, @persona, @spawner, @command, @args, @pid, @state, @exitCode, @signal, @startedAt, @endedAt, @deadline, @stdout, @stderr, @tokenId, @cwd)",
    ).run({ ...r, args: JSON.stringify(r.args) });
  }
  getAgent(id: string): AgentRecord | undefined {
    const r = this.prep("SELECT * FROM agents WHERE id = ?").get(id) as Row | undefined;
    return r && toAgent(r);
  }
  listAgents(spawner?: string): AgentRecord[] {
    const rows = (
      spawner === undefined
        ? this.prep("SELECT * FROM agents ORDER BY started_at").all()
        : this.prep("SELECT * FROM agents WHERE spawner = ? ORDER BY started_at").all(spawner)
    ) as Row[];
    return rows.map(toAgent);
  }
  updateAgent(id: string, f: Partial<AgentRecord>): void {
    const cols: Record<string, string> = {
      pid: "pid",
      state: "state",
      exitCode: "exit_code",
      signal: "signal",
      endedAt: "ended_at",
      stdout: "stdout",
      stderr: "stderr",
    };
    const keys = Object.keys(f).filter((k) => Object.hasOwn(cols, k));
    if (!keys.length) return;
    const sql = `UPDATE agents SET ${keys.map((k) => `${cols[k]} = @${k}`).join(", ")} WHERE id = @id`;
    this.prep(sql).run({ ...Object.fromEntries(keys.map((k) => [k, f[k as keyof AgentRecord] ?? null])), id });
  }

  // deferred ops
  insertOp(r: OpRecord): void {
    this.prep(
      "INSERT INTO ops (id, persona, session, kind, name, state, result, error_class, message, created_at, started_at, finished_at, deadline, expires_at) " +
        "VALUES (@id, @persona, @session, @kind, @name, @state, @result, @errorClass, @message, @createdAt, @startedAt, @finishedAt, @deadline, @expiresAt)",
    ).run(r);
  }
  getOp(id: string): OpRecord | undefined {
    const r = this.prep("SELECT * FROM ops WHERE id = ?").get(id) as Row | undefined;
    return r && toOp(r);
  }
  updateOp(id: string, f: Partial<OpRecord>): void {
    const cols: Record<string, string> = {
      state: "state",
      result: "result",
      errorClass: "error_class",
      message: "message",
      startedAt: "started_at",
      finishedAt: "finished_at",
      expiresAt: "expires_at",
    };
    const keys = Object.keys(f).filter((k) => Object.hasOwn(cols, k));
    if (!keys.length) return;
    const sql = `UPDATE ops SET ${keys.map((k) => `${cols[k]} = @${k}`).join(", ")} WHERE id = @id`;
    this.prep(sql).run({ ...Object.fromEntries(keys.map((k) => [k, f[k as keyof OpRecord] ?? null])), id });
  }
  listOps(persona?: string, limit = 100): OpRecord[] {
    const rows = (
      persona === undefined
        ? this.prep("SELECT * FROM ops ORDER BY created_at DESC LIMIT ?").all(limit)
        : this.prep("SELECT * FROM ops WHERE persona = ? ORDER BY created_at DESC LIMIT ?").all(persona, limit)
    ) as Row[];
    return rows.map(toOp);
  }
  failInterruptedOps(message: string, now: number): { id: string; state: OpRecord["state"] }[] {
    const ids = (this.prep("SELECT id, state FROM ops WHERE state IN ('queued', 'running')").all() as Row[]).map((r) => ({
      id: r.id as string,
      state: r.state as OpRecord["state"],
    }));
    this.prep(
      "UPDATE ops SET state = 'failed', error_class = 'INTERNAL', message = ?, finished_at = ? WHERE state IN ('queued', 'running')",
    ).run(message, now);
    return ids;
  }
  pruneOps(now: number): number {
    return this.prep("DELETE FROM ops WHERE expires_at < ? AND state NOT IN ('queued', 'running')").run(now).changes;
  }

  // tokens
  recordToken(r: Omit<TokenRecord, "revokedAt">): void {
    this.prep("INSERT INTO tokens (id, kid, sub, chain, exp, minted_by, created_at, family) VALUES (?, ?, ?, ?, ?, ?, ?, ?)").run(
      r.id,
      r.kid,
      r.sub,
      JSON.stringify(r.chain),
      r.exp,
      r.mintedBy,
      r.createdAt,
      r.family,
    );
  }
  getToken(id: string): TokenRecord | undefined {
    const r = this.prep("SELECT t.*, v.revoked_at FROM tokens t LEFT JOIN revocations v ON v.id = t.id WHERE t.id = ?").get(id) as
      | Row
      | undefined;
    return r && toToken(r);
  }
  listTokens(sub?: string, after = 0, limit = -1): TokenRecord[] {
    const sql = "SELECT t.rowid AS seq, t.*, v.revoked_at FROM tokens t LEFT JOIN revocations v ON v.id = t.id WHERE t.rowid > ?";
    const rows = (
      sub === undefined
        ? this.prep(`${sql} ORDER BY t.rowid LIMIT ?`).all(after, limit)
        : this.prep(`${sql} AND t.sub = ? ORDER BY t.rowid LIMIT ?`).all(after, sub, limit)
    ) as Row[];
    return rows.map(toToken);
  }
  tokensDerivedFrom(id: string): TokenRecord[] {
    // Chains are JSON arrays of 32-hex ids: the quoted id matches only a whole element.
    const rows = this.prep(
      "SELECT t.*, v.revoked_at FROM tokens t LEFT JOIN revocations v ON v.id = t.id WHERE t.chain LIKE ? ORDER BY t.rowid",
    ).all(`%"${id.replace(/[^0-9a-f]/g, "")}"%`) as Row[];
    return rows.map(toToken);
  }
  countTokensBy(mintedBy: string): number {
    return (this.prep("SELECT count(*) AS n FROM tokens WHERE minted_by = ?").get(mintedBy) as { n: number }).n;
  }
  pruneTokensBy(mintedBy: string, before: number): number {
    return this.prep("DELETE FROM tokens WHERE minted_by = ? AND exp < ?").run(mintedBy, before).changes;
  }
  pruneTokens(before: number): number {
    return this.db.transaction(() => {
      const n = this.prep("DELETE FROM tokens WHERE exp < ?").run(before).changes;
      // A revocation must outlive every token that names the revoked id in its chain: one pass
      // over the remaining chains, not a scan of them per revocation.
      const named = new Set<string>();
      for (const r of this.prep("SELECT chain FROM tokens").iterate() as Iterable<{ chain: string }>) {
        for (const id of JSON.parse(r.chain) as string[]) named.add(id);
      }
      const gone = this.prep(
        "SELECT id FROM revocations WHERE revoked_at < ? AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.id = revocations.id)",
      ).all(before) as { id: string }[];
      const drop = this.prep("DELETE FROM revocations WHERE id = ?");
      for (const { id } of gone) if (!named.has(id)) drop.run(id);
      return n;
    })();
  }
  revokeToken(id: string, by: string, at: number): boolean {
    return (
      this.prep("INSERT OR IGNORE INTO revocations (id, revoked_by, revoked_at) VALUES (?, ?, ?)").run(id, by, at).changes > 0
    );
  }
  revokedTokenIds(): string[] {
    return (this.prep("SELECT id FROM revocations").all() as Row[]).map((r) => r.id as string);
  }
  noteRevocationSeq(id: string, seq: number): void {
    this.prep("UPDATE revocations SET audit_seq = ? WHERE id = ?").run(seq, id);
  }
  revocationSeqs(): [string, number][] {
    return (this.prep("SELECT id, audit_seq FROM revocations WHERE audit_seq IS NOT NULL").all() as Row[]).map((r) => [
      r.id as string,
      r.audit_seq as number,
    ]);
  }

  // audit
  auditHashAt(seq: number): Uint8Array | undefined {
    const r = this.prep("SELECT hash FROM audit WHERE seq = ?").get(seq) as { hash: Uint8Array } | undefined;
    return r?.hash;
  }
  appendAudit(rows: AuditRow[], dedupe: DedupeRow[] = [], journalUpTo = 0, checkpoints: AuditCheckpoint[] = []): void {
    this.appendTx(rows, dedupe, journalUpTo, checkpoints);
  }
  firstAuditSeq(): number | undefined {
    return (this.prep("SELECT min(seq) AS s FROM audit").get() as { s: number | null }).s ?? undefined;
  }
  pruneAudit(throughSeq: number): number {
    return this.db.transaction(() => {
      const n = this.prep("DELETE FROM audit WHERE seq <= ?").run(throughSeq).changes;
      this.prep("DELETE FROM audit_checkpoints WHERE seq < ?").run(throughSeq);
      return n;
    })();
  }

  /**
   * Runs an administrative change made without the kernel (the CLI on the home database) and
   * journals it in the same transaction; the kernel moves the journal into the audit chain.
   * A change that returns `false` changed nothing and is not journalled.
   */
  withJournal<T>(entry: Omit<OfflineEntry, "id" | "time">, change: () => T): T {
    return this.db.transaction(() => {
      const r = change();
      if (r === false) return r;
      this.prep("INSERT INTO offline_journal (time, actor, op, target, message) VALUES (?, ?, ?, ?, ?)").run(
        Date.now(),
        entry.actor,
        entry.op,
        entry.target,
        entry.message,
      );
      return r;
    })();
  }
  offlineJournal(limit = -1): OfflineEntry[] {
    return this.prep("SELECT id, time, actor, op, target, message FROM offline_journal ORDER BY id LIMIT ?").all(
      limit,
    ) as OfflineEntry[];
  }
  lookupDedupe(key: string, now: number): DedupeRow | undefined {
    const r = this.prep("SELECT * FROM dedupe WHERE key = ? AND expires >= ?").get(key, now) as Row | undefined;
    return r && { key, hash: r.hash as Uint8Array, response: r.response as Uint8Array, expires: r.expires as number };
  }
  putDedupe(d: DedupeRow): void {
    this.prep("INSERT OR REPLACE INTO dedupe (key, hash, response, expires) VALUES (?, ?, ?, ?)").run(
      d.key,
      Buffer.from(d.hash),
      Buffer.from(d.response),
      d.expires,
    );
  }
  pruneDedupe(now: number, max?: number): number {
    if (max === undefined) return this.prep("DELETE FROM dedupe WHERE expires < ?").run(now).changes;
    // Rows are appended in expiry order: the oldest by rowid, not a scan of the table.
    return this.prep("DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe ORDER BY rowid LIMIT ?) AND expires < ?").run(
      max,
      now,
    ).changes;
  }
  lastAudit(): AuditRow | undefined {
    const r = this.st.lastAudit.get() as Row | undefined;
    return r && toAudit(r);
  }
  scanAudit(fromSeq: number, batch: number): AuditRow[] {
    return (this.st.scanAudit.all(fromSeq, batch) as unknown[][]).map((a) => ({
      seq: a[0] as number,
      time: a[1] as number,
      kernel: a[2] as string,
      session: a[3] as string,
      persona: a[4] as string,
      phase: a[5] as AuditRow["phase"],
      requestId: a[6] as number | null,
      op: a[7] as string | null,
      target: a[8] as string | null,
      intentHash: a[9] as Uint8Array | null,
      intent: a[10] as Uint8Array | null,
      caps: a[11] as string | null,
      status: a[12] as string | null,
      errorClass: a[13] as string | null,
      message: a[14] as string | null,
      durationUs: a[15] as number | null,
      traceparent: a[16] as string | null,
      prevHash: a[17] as Uint8Array,
      hash: a[18] as Uint8Array,
      execution: a[19] as string | null,
      domain: a[20] as string | null,
      measurements: a[21] as Uint8Array | null,
      detail: (a[22] as string | null) ?? null,
    }));
  }
  countAudit(): number {
    return (this.st.countAudit.get() as Row).n as number;
  }
  queryAudit(q: AuditQuery): AuditRow[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.persona !== undefined) where.push("persona = ?") && args.push(q.persona);
    if (q.op !== undefined) where.push("op = ?") && args.push(q.op);
    if (q.status !== undefined) where.push("status = ?") && args.push(q.status);
    if (q.since !== undefined) where.push("time >= ?") && args.push(q.since);
    if (q.afterSeq !== undefined) where.push("seq > ?") && args.push(q.afterSeq);
    const sql = `SELECT * FROM audit ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY seq DESC LIMIT ?`;
    args.push(q.limit ?? 100);
    return (this.prep(sql).all(...args) as Row[]).map(toAudit).reverse();
  }
  addCheckpoint(c: AuditCheckpoint): void {
    this.st.addCheckpoint.run(c.seq, Buffer.from(c.hash), c.time, c.kernel, Buffer.from(c.publicKey), Buffer.from(c.signature));
  }
  checkpoints(): AuditCheckpoint[] {
    return (this.st.checkpoints.all() as Row[]).map((r) => ({
      seq: r.seq as number,
      hash: r.hash as Uint8Array,
      time: r.time as number,
      kernel: r.kernel as string,
      publicKey: r.public_key as Uint8Array,
      signature: r.signature as Uint8Array,
    }));
  }
}

function toPersona(r: Row): PersonaRecord {
  return { id: r.id as string, publicKey: r.public_key as Uint8Array, createdAt: r.created_at as number };
}

function toMeta(r: Row): ObjectMeta {
  return {
    workspace: r.workspace as string,
    path: r.path as string,
    owner: (r.owner as string | undefined) ?? "",
    generation: r.generation as number,
    size: r.size as number,
    updatedAt: r.updated_at as number,
  };
}

const EMPTY = Buffer.alloc(0);

function toPrevious(r: Row): PreviousObject {
  return { size: r.size as number, owner: r.owner as string, hash: (r.hash as Uint8Array | null) ?? null };
}

/**
 * Objects gained a body hash (bodies in the file store, docs/architecture.md) and an index to
 * count a body's references. Rows of an older home keep their inline bodies and are read as such.
 */
function migrateObjects(db: Database.Database): void {
  const cols = db.prepare("PRAGMA table_info(objects)").all() as { name: string }[];
  if (!cols.some((c) => c.name === "hash")) db.exec("ALTER TABLE objects ADD COLUMN hash BLOB");
  db.exec("CREATE INDEX IF NOT EXISTS objects_hash ON objects (hash) WHERE hash IS NOT NULL");
}

function toAgent(r: Row): AgentRecord {
  return {
    id: r.id as string,
    persona: r.persona as string,
    spawner: r.spawner as string,
    command: r.command as string,
    args: JSON.parse(r.args as string) as string[],
    pid: (r.pid as number | null) ?? null,
    state: r.state as AgentRecord["state"],
    exitCode: (r.exit_code as number | null) ?? null,
    signal: (r.signal as string | null) ?? null,
    startedAt: r.started_at as number,
    endedAt: (r.ended_at as number | null) ?? null,
    deadline: r.deadline as number,
    stdout: (r.stdout as Uint8Array | null) ?? null,
    stderr: (r.stderr as Uint8Array | null) ?? null,
    tokenId: r.token_id as string,
    cwd: r.cwd as string,
  };
}

function toOp(r: Row): OpRecord {
  return {
    id: r.id as string,
    persona: r.persona as string,
    session: r.session as string,
    kind: r.kind as OpRecord["kind"],
    name: r.name as string,
    state: r.state as OpRecord["state"],
    result: (r.result as Uint8Array | null) ?? null,
    errorClass: (r.error_class as string | null) ?? null,
    message: (r.message as string | null) ?? null,
    createdAt: r.created_at as number,
    startedAt: (r.started_at as number | null) ?? null,
    finishedAt: (r.finished_at as number | null) ?? null,
    deadline: (r.deadline as number | null) ?? null,
    expiresAt: r.expires_at as number,
  };
}

function toToken(r: Row): TokenRecord {
  return {
    id: r.id as string,
    kid: r.kid as string,
    sub: r.sub as string,
    chain: JSON.parse(r.chain as string) as string[],
    exp: r.exp as number,
    mintedBy: r.minted_by as string,
    createdAt: r.created_at as number,
    revokedAt: (r.revoked_at as number | null) ?? null,
    family: (r.family as string | null) ?? (r.id as string),
    ...(r.seq !== undefined ? { seq: r.seq as number } : {}),
  };
}

/** Token rows gained a family column (rate buckets shared by refreshed copies) and a minter index. */
function migrateTokens(db: Database.Database): void {
  const cols = db.prepare("PRAGMA table_info(tokens)").all() as { name: string }[];
  if (!cols.some((c) => c.name === "family")) db.exec("ALTER TABLE tokens ADD COLUMN family TEXT");
  // Where each revocation is on the audit record, so a refusal it causes can point there after a restart.
  const rcols = db.prepare("PRAGMA table_info(revocations)").all() as { name: string }[];
  if (!rcols.some((c) => c.name === "audit_seq")) db.exec("ALTER TABLE revocations ADD COLUMN audit_seq INTEGER");
  db.exec("CREATE INDEX IF NOT EXISTS tokens_minted_by ON tokens (minted_by, exp)");
}

function toAudit(r: Row): AuditRow {
  return {
    seq: r.seq as number,
    time: r.time as number,
    kernel: r.kernel as string,
    session: r.session as string,
    persona: r.persona as string,
    phase: r.phase as AuditRow["phase"],
    requestId: r.request_id as number | null,
    op: r.op as string | null,
    target: r.target as string | null,
    intentHash: r.intent_hash as Uint8Array | null,
    intent: r.intent as Uint8Array | null,
    caps: r.caps as string | null,
    status: r.status as string | null,
    errorClass: r.error_class as string | null,
    message: r.message as string | null,
    durationUs: r.duration_us as number | null,
    traceparent: r.traceparent as string | null,
    execution: (r.execution as string | null) ?? null,
    domain: (r.domain as string | null) ?? null,
    measurements: (r.measurements as Uint8Array | null) ?? null,
    detail: (r.detail as string | null) ?? null,
    prevHash: r.prev_hash as Uint8Array,
    hash: r.hash as Uint8Array,
  };
}
