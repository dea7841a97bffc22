import Database from "better-sqlite3";
import { createIfAbsent } from "../../secure-files.js";
import { AUDIT_BATCHES_TABLE } from "../audit-segments.js";
import { OBJECT_COST_SQL } from "../object-cost.js";
import { AUDIT_TABLE, migrateAuditLayout } from "./audit-layout.js";

/**
 * Every pragma the kernel's connection runs with, in one place. NORMAL in WAL mode survives a
 * process kill; only an OS crash can lose the last commits (what must not, syncs: see syncWal).
 */
const PRAGMAS = ["journal_mode = WAL", "synchronous = NORMAL", "busy_timeout = 5000"];

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS personas (
  id TEXT PRIMARY KEY, public_key BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
  workspace TEXT NOT NULL, path TEXT NOT NULL, data BLOB NOT NULL, generation INTEGER NOT NULL,
  size INTEGER NOT NULL, updated_at INTEGER NOT NULL, owner TEXT NOT NULL DEFAULT '', hash BLOB, PRIMARY KEY (workspace, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS object_generations (
  workspace TEXT NOT NULL, path TEXT NOT NULL, generation INTEGER NOT NULL, PRIMARY KEY (workspace, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generation_floors (workspace TEXT PRIMARY KEY, floor INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (scope TEXT NOT NULL, resource TEXT NOT NULL, amount INTEGER NOT NULL, PRIMARY KEY (scope, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS allocations (id TEXT PRIMARY KEY, persona TEXT NOT NULL, resource TEXT NOT NULL, amount INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS allocations_persona ON allocations (persona);
${AUDIT_TABLE};
${AUDIT_BATCHES_TABLE};
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, kid TEXT NOT NULL, sub TEXT NOT NULL, chain TEXT NOT NULL, exp INTEGER NOT NULL,
  minted_by TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (id TEXT PRIMARY KEY, revoked_by TEXT NOT NULL, revoked_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, hash BLOB NOT NULL, response BLOB NOT NULL, expires INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
  id TEXT PRIMARY KEY, persona TEXT NOT NULL, session TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
  state TEXT NOT NULL, result BLOB, error_class TEXT, message TEXT, created_at INTEGER NOT NULL,
  started_at INTEGER, finished_at INTEGER, deadline INTEGER, expires_at INTEGER NOT NULL, claimed_at INTEGER);
CREATE INDEX IF NOT EXISTS ops_persona ON ops (persona, created_at);
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY, persona TEXT NOT NULL, spawner TEXT NOT NULL, command TEXT NOT NULL, args TEXT NOT NULL,
  pid INTEGER, state TEXT NOT NULL, exit_code INTEGER, signal TEXT, started_at INTEGER NOT NULL, ended_at INTEGER,
  deadline INTEGER NOT NULL, stdout BLOB, stderr BLOB, token_id TEXT NOT NULL, cwd TEXT NOT NULL, proc_id TEXT);
CREATE TABLE IF NOT EXISTS agent_output (id TEXT PRIMARY KEY, stdout BLOB, stderr BLOB);
CREATE TABLE IF NOT EXISTS op_results (id TEXT PRIMARY KEY, result BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS offline_journal (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, actor TEXT NOT NULL, op TEXT NOT NULL,
  target TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS live_sessions (
  session TEXT PRIMARY KEY, persona TEXT NOT NULL, caps TEXT, open_seq INTEGER NOT NULL, close_seq INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
  seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, time INTEGER NOT NULL, kernel TEXT NOT NULL,
  public_key BLOB NOT NULL, signature BLOB NOT NULL);
`;

/**
 * Opens (creating when absent) the home database: pragmas, tables, and the columns and indexes
 * added after the first release.
 */
export function openDatabase(path: string): Database.Database {
  // SQLite gives the WAL and shared-memory files the database file's mode: a new database is
  // 0600 (an existing home's files are checked by the kernel before it opens them).
  if (path !== ":memory:") createIfAbsent(path);
  const db = new Database(path);
  try {
    return prepareDatabase(db);
  } catch (e) {
    db.close();
    const code = (e as { code?: unknown }).code;
    // A file that is not a database, or one damaged: the home's state, said as such (not an internal error).
    if (typeof code === "string" && (code === "SQLITE_NOTADB" || code.startsWith("SQLITE_CORRUPT")))
      throw new DamagedDatabaseError(`the home's database ${path} is damaged or not a database: ${(e as Error).message}`);
    throw e;
  }
}

/** The home's database file cannot be opened as one: not a SQLite database, or corrupt. */
export class DamagedDatabaseError extends Error {
  override name = "DamagedDatabaseError";
}

function prepareDatabase(db: Database.Database): Database.Database {
  for (const p of PRAGMAS) db.pragma(p);
  db.exec(SCHEMA);
  if (migrateTokens(db)) recountPersonaUsage(db);
  migrateObjects(db);
  // The audit table moved from a column per field to the record's bytes (audit-layout.ts).
  migrateAuditLayout(db);
  migrateAgents(db);
  migrateOps(db);
  migratePersonas(db);
  migrateTokenViewers(db);
  migrateDedupe(db);
  // An object's storage.bytes became its body, its path and its row (store/object-cost.ts): an
  // older home's figures counted bodies only.
  moveOnce(db, "usage_counts_object_rows", () => recountStorageUsage(db));
  // Rows at 0 an older kernel kept (one per persona or workspace that ever stored something): absent is 0.
  moveOnce(db, "usage_zero_rows_dropped", () => db.exec("DELETE FROM usage WHERE amount <= 0"));
  return db;
}

/**
 * Who sees the tokens `where` selects (alias `t`, binding its parameters three times): their
 * subject, their minter, and the subjects of the tokens up their chain, one token_viewers row
 * each. Written with each token, and for every row of an older home once (schema.ts).
 */
export const insertViewers = (where: string): string =>
  "INSERT OR IGNORE INTO token_viewers (viewer, token_seq) " +
  `SELECT t.sub, t.rowid FROM tokens t WHERE ${where} ` +
  `UNION SELECT t.minted_by, t.rowid FROM tokens t WHERE ${where} ` +
  "UNION SELECT up.sub, t.rowid FROM tokens t " +
  "JOIN json_each(CASE WHEN json_valid(t.chain) THEN t.chain ELSE '[]' END) j JOIN tokens up ON up.id = j.value " +
  `WHERE ${where}`;

/**
 * The one trigger a kernel makes, as SQLite keeps it in sqlite_master: the audit tools refuse a
 * home with any other (audit/evidence-schema.ts).
 */
export const TOKENS_VIEWERS_GONE =
  "CREATE TRIGGER tokens_viewers_gone AFTER DELETE ON tokens BEGIN DELETE FROM token_viewers WHERE token_seq = old.rowid; END";

/**
 * Who sees each token (token.list, and the ownership of token ops): its subject, its minter and
 * the subjects of the tokens up its chain, one row each, written with the token. token.list read
 * a page of the whole table and looked up every chain id of each row the caller did not own
 * (31 × 1,000 lookups for a page of another persona's deep chains: a second of the kernel's
 * thread); a persona's tokens are now one index range over its tree. Filled once for an older home.
 */
function migrateTokenViewers(db: Database.Database): void {
  db.exec(
    "CREATE TABLE IF NOT EXISTS token_viewers (viewer TEXT NOT NULL, token_seq INTEGER NOT NULL, PRIMARY KEY (viewer, token_seq)) WITHOUT ROWID",
  );
  db.exec("CREATE INDEX IF NOT EXISTS token_viewers_token ON token_viewers (token_seq)");
  // A token's rows go with it, however it is deleted (pruning, an operator's tool).
  db.exec(TOKENS_VIEWERS_GONE.replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS"));
  moveOnce(db, "token_viewers_filled", () => db.exec(insertViewers("1")));
}

/**
 * A dedupe answer committed with its op's effect names the request's intent record and the log's
 * head at the commit, and keeps its outcome record's detail (audit/recover-outcomes.ts).
 */
function migrateDedupe(db: Database.Database): void {
  const cols = db.prepare("PRAGMA table_info(dedupe)").all() as { name: string }[];
  if (!cols.some((c) => c.name === "intent_seq")) db.exec("ALTER TABLE dedupe ADD COLUMN intent_seq INTEGER");
  if (!cols.some((c) => c.name === "after_seq")) db.exec("ALTER TABLE dedupe ADD COLUMN after_seq INTEGER");
  // ...and what its outcome record says: the detail, and the ids it revoked (a JSON array).
  if (!cols.some((c) => c.name === "detail")) db.exec("ALTER TABLE dedupe ADD COLUMN detail TEXT");
  if (!cols.some((c) => c.name === "revoked")) db.exec("ALTER TABLE dedupe ADD COLUMN revoked TEXT");
  // A partial index on those rows (an earlier kpip's) cost every effect's commit one more page to
  // the WAL; a start finds them by walking the table's newest rows (SqliteStore.effectAnswersSince).
  db.exec("DROP INDEX IF EXISTS dedupe_effects");
}

/**
 * An agent's captured output moved to its own table (agent_output): a listing of agents read
 * every row's output with it (up to 2 × maxOutputBytes a row), and the columns after the output
 * in a row are reached only through its overflow pages. Outputs of an older home move once; the
 * old columns stay, empty. Indexes for listing by spawner, finding running agents and pruning
 * ended ones.
 */
function migrateAgents(db: Database.Database): void {
  moveOnce(db, "agent_output_moved", () => {
    db.exec(
      "INSERT OR REPLACE INTO agent_output (id, stdout, stderr) SELECT id, stdout, stderr FROM agents WHERE stdout IS NOT NULL OR stderr IS NOT NULL",
    );
    db.exec("UPDATE agents SET stdout = NULL, stderr = NULL WHERE stdout IS NOT NULL OR stderr IS NOT NULL");
  });
  db.exec("CREATE INDEX IF NOT EXISTS agents_spawner ON agents (spawner)");
  db.exec("CREATE INDEX IF NOT EXISTS agents_state ON agents (state)");
  db.exec("CREATE INDEX IF NOT EXISTS agents_ended ON agents (ended_at) WHERE ended_at IS NOT NULL");
  // The process's identity beyond its pid, for recovery after a crash (agents/process-identity.ts).
  const cols = db.prepare("PRAGMA table_info(agents)").all() as { name: string }[];
  if (!cols.some((c) => c.name === "proc_id")) db.exec("ALTER TABLE agents ADD COLUMN proc_id TEXT");
  // Which spawn of an agent spawner spawned it (its name is reused; AgentRecord.spawnerSpawn).
  if (!cols.some((c) => c.name === "spawner_spawn")) db.exec("ALTER TABLE agents ADD COLUMN spawner_spawn TEXT");
  // 1 from an agent's end stored until its agent.exited record commits: a kill in between leaves
  // the next start to record it (AgentManager.recover). Indexed on the few rows that have it.
  if (!cols.some((c) => c.name === "end_unrecorded")) db.exec("ALTER TABLE agents ADD COLUMN end_unrecorded INTEGER");
  db.exec("CREATE INDEX IF NOT EXISTS agents_end_unrecorded ON agents (id) WHERE end_unrecorded IS NOT NULL");
}

/**
 * Runs a one-time move of rows in one transaction and notes it in `meta` under `key`, so later
 * starts look the note up instead of scanning the table for rows left to move.
 */
function moveOnce(db: Database.Database, key: string, move: () => void): void {
  if (db.prepare("SELECT 1 FROM meta WHERE key = ?").get(key)) return;
  db.transaction(() => {
    move();
    db.prepare("INSERT INTO meta (key, value) VALUES (?, '1')").run(key);
  })();
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

/**
 * An op's result moved to its own table (op_results), like an agent's output: a row's columns
 * after a large result are reached only through its overflow pages (60 ops of 2 MiB: 69 ms to
 * list their status columns, 0.1 ms without). Results of an older home move once.
 */
function migrateOps(db: Database.Database): void {
  moveOnce(db, "op_results_moved", () => {
    db.exec("INSERT OR REPLACE INTO op_results (id, result) SELECT id, result FROM ops WHERE result IS NOT NULL");
    db.exec("UPDATE ops SET result = NULL WHERE result IS NOT NULL");
  });
  db.exec("CREATE INDEX IF NOT EXISTS ops_expires ON ops (expires_at)");
  // When op.result first handed an op's outcome out: until then a trim keeps it, within its grace.
  const cols = db.prepare("PRAGMA table_info(ops)").all() as { name: string }[];
  if (!cols.some((c) => c.name === "claimed_at")) db.exec("ALTER TABLE ops ADD COLUMN claimed_at INTEGER");
  // Which spawn of an agent persona submitted it (its name is reused; OpRecord.spawn).
  if (!cols.some((c) => c.name === "spawn")) db.exec("ALTER TABLE ops ADD COLUMN spawn TEXT");
  // 1 from an op's end stored until its op.state record commits (as agents' end_unrecorded).
  if (!cols.some((c) => c.name === "end_unrecorded")) db.exec("ALTER TABLE ops ADD COLUMN end_unrecorded INTEGER");
  db.exec("CREATE INDEX IF NOT EXISTS ops_end_unrecorded ON ops (id) WHERE end_unrecorded IS NOT NULL");
  // A command's process (its group's leader) and its identity: a start after a kill ends what is
  // left of it, as it does an agent's (ComputeEngine.recover); a sandbox's dies with its kernel.
  if (!cols.some((c) => c.name === "pid")) db.exec("ALTER TABLE ops ADD COLUMN pid INTEGER");
  if (!cols.some((c) => c.name === "proc_id")) db.exec("ALTER TABLE ops ADD COLUMN proc_id TEXT");
}

/**
 * Personas gained the persona whose persona.register added them (null: the kernel or an operator),
 * so what one persona's tree registers can be bounded (maxRegisteredPersonas).
 */
function migratePersonas(db: Database.Database): void {
  const cols = db.prepare("PRAGMA table_info(personas)").all() as { name: string }[];
  if (!cols.some((c) => c.name === "registered_by")) db.exec("ALTER TABLE personas ADD COLUMN registered_by TEXT");
  db.exec("CREATE INDEX IF NOT EXISTS personas_registered_by ON personas (registered_by) WHERE registered_by IS NOT NULL");
  // Removing a persona tree revokes each removed persona's tokens: found by sub, not a table scan per persona.
  db.exec("CREATE INDEX IF NOT EXISTS tokens_sub ON tokens (sub)");
}

/**
 * Token rows gained a family column (rate buckets shared by refreshed copies), a refresh-family
 * column (copy_of: revoking any copy ends every copy), a minter index,
 * and the limits their ancestors hold over their subject's tree (`bounds`, JSON).
 */
function migrateTokens(db: Database.Database): boolean {
  const cols = db.prepare("PRAGMA table_info(tokens)").all() as { name: string }[];
  if (!cols.some((c) => c.name === "family")) db.exec("ALTER TABLE tokens ADD COLUMN family TEXT");
  const bounds = !cols.some((c) => c.name === "bounds");
  if (bounds) db.exec("ALTER TABLE tokens ADD COLUMN bounds TEXT");
  // The refresh family a token is a copy in (its first copy's id), read by id only: no index.
  if (!cols.some((c) => c.name === "copy_of")) db.exec("ALTER TABLE tokens ADD COLUMN copy_of TEXT");
  // Where each revocation is on the audit record, so a refusal it causes can point there after a restart.
  const rcols = db.prepare("PRAGMA table_info(revocations)").all() as { name: string }[];
  if (!rcols.some((c) => c.name === "audit_seq")) db.exec("ALTER TABLE revocations ADD COLUMN audit_seq INTEGER");
  db.exec("CREATE INDEX IF NOT EXISTS tokens_minted_by ON tokens (minted_by, exp)");
  return bounds;
}

/** Sums per persona and resource, each charged to every persona it lies under too (resources/lineage.ts). */
class TreeSums {
  readonly sums = new Map<string, Map<string, number>>();
  charge(persona: string, resource: string, n: number): void {
    for (let p = persona; ; ) {
      const m = this.sums.get(p) ?? new Map<string, number>();
      m.set(resource, (m.get(resource) ?? 0) + n);
      this.sums.set(p, m);
      const i = p.lastIndexOf("/");
      if (i <= 0) break;
      p = p.slice(0, i);
    }
  }
}

/** What each owner's objects cost in storage.bytes, as the ledger charges them (store/object-cost.ts). */
function chargeObjects(db: Database.Database, sums: TreeSums): void {
  for (const r of db
    .prepare(`SELECT owner, sum(${OBJECT_COST_SQL}) AS n FROM objects WHERE owner <> '' GROUP BY owner`)
    .all() as { owner: string; n: number }[])
    sums.charge(r.owner, "storage.bytes", r.n);
}

/**
 * Every persona's and workspace's storage.bytes, recounted from the objects themselves (each its
 * body, its path and its row): once for an older home, whose figures counted bodies only. The same
 * figures as the ledger's charges: a home recounted twice, or a current one, keeps its usage.
 */
function recountStorageUsage(db: Database.Database): void {
  const sums = new TreeSums();
  chargeObjects(db, sums);
  const put = db.prepare("INSERT INTO usage (scope, resource, amount) VALUES (?, 'storage.bytes', ?)");
  db.exec("DELETE FROM usage WHERE resource = 'storage.bytes'");
  for (const [p, m] of sums.sums) {
    const n = m.get("storage.bytes") ?? 0;
    if (n > 0) put.run(`persona:${p}`, n);
  }
  db.exec(
    `INSERT INTO usage (scope, resource, amount) SELECT 'workspace:' || workspace, 'storage.bytes', sum(${OBJECT_COST_SQL}) FROM objects GROUP BY workspace`,
  );
}

/**
 * Persona usage became a tree's (resources/lineage.ts): what an agent or a sub-persona stores or
 * holds is charged to every persona it lies under too. Recounted once, when the tokens gain
 * their `bounds`, from the objects and allocations themselves: an older home's counters held each
 * persona's own usage only, and releasing it from the ancestors would have freed their room.
 */
function recountPersonaUsage(db: Database.Database): void {
  const tree = new TreeSums();
  const sums = tree.sums;
  const charge = (persona: string, resource: string, n: number) => tree.charge(persona, resource, n);
  chargeObjects(db, tree);
  for (const r of db.prepare("SELECT persona, resource, sum(amount) AS n FROM allocations GROUP BY persona, resource").all() as {
    persona: string;
    resource: string;
    n: number;
  }[])
    charge(r.persona, r.resource, r.n);
  const put = db.prepare("INSERT INTO usage (scope, resource, amount) VALUES (?, ?, ?)");
  db.transaction(() => {
    db.exec("DELETE FROM usage WHERE scope LIKE 'persona:%'");
    for (const [p, m] of sums) for (const [resource, n] of m) put.run(`persona:${p}`, resource, n);
  })();
}
