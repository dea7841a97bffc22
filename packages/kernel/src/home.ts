import { createPrivateKey, generateKeyPairSync, type KeyObject, randomUUID } from "node:crypto";
import { existsSync, linkSync, lstatSync, mkdirSync, readFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { generateIdentity, parseIdentity, serializeIdentity, tokenFromString, tokenToString } from "@kpip/protocol";
import Database from "better-sqlite3";
import type { TokenService } from "./auth/tokens.js";
import {
  createExclusive,
  ensurePrivateFile,
  readRegularFile,
  secureHome,
  UnsafeHomeError,
  writePidFile,
} from "./secure-files.js";
import { AUDIT_JOURNAL_FILE } from "./store/audit-journal.js";
import { AUDIT_SEGMENT_DIR } from "./store/audit-segments.js";
import type { SqliteStore } from "./store/sqlite.js";

/** File names inside the kernel home. */
export const HOME_FILES = {
  database: "kernel.db",
  /** The audit chain's commits before SQLite indexes them (store/audit-journal.ts). */
  auditJournal: AUDIT_JOURNAL_FILE,
  /** The audit chain's segment files (store/audit-segments.ts). */
  auditSegments: AUDIT_SEGMENT_DIR,
  kernelKey: "kernel.key",
  adminIdentity: "admin.identity",
  adminToken: "admin.token",
  /** SQLite's temporary files (large sorts, temp indices), on the home's file system ({@link useHomeForSqliteTemp}). */
  sqliteTemp: "tmp",
} as const;

/**
 * Points this process's SQLite at `<home>/tmp` for its temporary files, unless SQLITE_TMPDIR is
 * set (the operator's choice, or an earlier kernel of this process's). Otherwise SQLite writes
 * them to TMPDIR or /tmp, where sandboxes' scratch lives: a persona filling it would fail the
 * kernel's queries as a full disk. SQLite reads SQLITE_TMPDIR once, when the process first uses
 * it: an embedder whose process used SQLite before the kernel sets it itself (docs/architecture.md).
 * Returns the directory, or undefined when SQLITE_TMPDIR was already set.
 */
export function useHomeForSqliteTemp(home: string): string | undefined {
  if (process.env.SQLITE_TMPDIR) return undefined;
  const dir = join(home, HOME_FILES.sqliteTemp);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  process.env.SQLITE_TMPDIR = dir;
  return dir;
}

/**
 * How long the admin's root token lives; renew it by deleting the file and restarting (the old
 * one stays valid until revoked: the start records and logs which, see {@link AdminToken}).
 */
const ADMIN_TOKEN_TTL_MS = 10 * 365 * 24 * 3600 * 1000;

/**
 * Mints the admin persona's root token (every op on every target) on first start and keeps
 * it in <home>/admin.token (0600). Even the admin acts only through a capability.
 */
export function ensureAdminToken(
  home: string,
  store: Pick<SqliteStore, "transaction" | "getToken" | "liveRootTokens">,
  tokens: TokenService,
  admin: string,
  now: number = Date.now(),
): AdminToken {
  const path = join(home, HOME_FILES.adminToken);
  // Written under this name in the transaction that records the token, and named only once that
  // committed: a kernel killed in between leaves a file whose row never committed (dropped) or a
  // recorded token not yet named (named now), never a 10-year row no file holds and a second mint.
  const pending = `${path}.new`;
  if (existsSync(pending)) {
    if (!existsSync(path) && pendingTokenRecorded(pending, store, admin)) linkSync(pending, path);
    unlinkSync(pending);
  }
  if (existsSync(path)) return { path };
  const minted = store.transaction(() => {
    const t = tokens.mint(undefined, "kernel", {
      sub: admin,
      rights: [{ ops: ["**"], targets: ["**"] }],
      ttlMs: ADMIN_TOKEN_TTL_MS,
    });
    writeSecret(pending, `${tokenToString(t)}\n`);
    return t.claims.id;
  });
  linkSync(pending, path);
  unlinkSync(pending);
  // Revoking them here would end every token minted from them too (the admin's delegations):
  // the caller names them instead, for the operator to revoke what was lost or leaked.
  const older = store.liveRootTokens(admin, now).filter((id) => id !== minted);
  return { path, minted, older };
}

/** What {@link ensureAdminToken} found or made. */
export interface AdminToken {
  /** The file holding the admin's root token. */
  path: string;
  /** The id of the token minted by this start (the file was missing). */
  minted?: string;
  /** When one was minted: the admin's earlier root tokens, still unexpired and unrevoked. */
  older?: string[];
}

/** Whether the token in `pending` is the admin's root token as recorded (its row committed, unrevoked). */
function pendingTokenRecorded(pending: string, store: Pick<SqliteStore, "getToken">, admin: string): boolean {
  let id: string;
  try {
    const text = readRegularFile(pending, 64 * 1024).toString("utf8");
    id = tokenFromString(text.trim()).claims.id;
  } catch {
    return false;
  }
  const rec = store.getToken(id);
  return rec !== undefined && rec.sub === admin && rec.mintedBy === "kernel" && rec.revokedAt === null;
}

/** Another live kernel owns this home; this one does not start. */
export class HomeInUseError extends Error {
  override name = "HomeInUseError";
}

/**
 * Takes the home for this kernel: an exclusive SQLite lock on `<home>/kernel.lock`, held for
 * the kernel's lifetime. Two kernels on one home would both append to the audit chain and fork
 * it, whatever sockets they listen on. The lock is the operating system's (fcntl), so it is
 * released when the process dies however it dies, holds across pid namespaces and symlinked
 * paths, and SQLite also refuses a second kernel in the same process. `<home>/kernel.pid` only
 * names the owner in the error. Returns the release.
 */
export function acquireHome(home: string): () => void {
  const lockPath = join(home, "kernel.lock");
  const pidPath = join(home, "kernel.pid");
  ensurePrivateFile(lockPath);
  const db = new Database(lockPath, { timeout: 0 });
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    // The first write takes the exclusive lock, and EXCLUSIVE mode never gives it back.
    db.exec("BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS owner (pid INTEGER); COMMIT");
  } catch (e) {
    db.close();
    if ((e as { code?: string }).code !== "SQLITE_BUSY") throw e;
    let owner = "";
    try {
      owner = ` (process ${readFileSync(pidPath, "utf8").trim()})`;
    } catch {
      // no pid file: the owner is starting or stopping
    }
    throw new HomeInUseError(`kernel home ${home} is in use by another kernel${owner}; stop it first`);
  }
  try {
    writePidFile(pidPath, process.pid);
  } catch (e) {
    db.close();
    throw e;
  }
  return () => {
    try {
      if (readFileSync(pidPath, "utf8").trim() === String(process.pid)) unlinkSync(pidPath);
    } catch {
      // already gone
    }
    db.close();
  };
}

/**
 * Creates the home directory (0700) if needed, then checks it before anything is written:
 * refused (UnsafeHomeError) when it is a link, not a directory, or it or anything in it belongs
 * to another user or is a link; group and other access are taken away (0700, files 0600).
 */
export function ensureHome(home: string): void {
  try {
    mkdirSync(home, { recursive: true, mode: 0o700 });
  } catch (e) {
    // A link to nowhere, or a file where the home should be: secureHome says which.
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  secureHome(home);
}

/** Writes a secret file with mode 0600, never replacing an existing one and never through a link. */
export function writeSecret(path: string, text: string): void {
  // Whole or not at all: a kernel killed while writing leaves only `<path>.tmp` (removed by the
  // next try), never a partial file under the name the next start would trust as written.
  const tmp = `${path}.tmp`;
  removeIfPresent(tmp);
  createExclusive(tmp, text);
  try {
    // Fails (EEXIST) when anything, a link included, is at `path`: created exclusively, as before.
    linkSync(tmp, path);
  } finally {
    unlinkSync(tmp);
  }
}

function removeIfPresent(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
}

/** Loads the kernel's Ed25519 signing key, creating it (0600) on first start. */
export function loadKernelKey(home: string): KeyObject {
  const path = join(home, HOME_FILES.kernelKey);
  if (!existsSync(path)) {
    const { privateKey } = generateKeyPairSync("ed25519");
    writeSecret(path, privateKey.export({ format: "pem", type: "pkcs8" }) as string);
  }
  const mode = lstatSync(path).mode & 0o777;
  if ((mode & 0o077) !== 0) throw new UnsafeHomeError(`kernel key ${path} has mode ${mode.toString(8)}; it must be 0600`);
  return createPrivateKey(readFileSync(path));
}

/** The kernel id, made once per home and kept in the database (globally unique). */
export function kernelId(store: SqliteStore): string {
  let id = store.getMeta("kernel_id");
  if (!id) {
    id = `k-${randomUUID()}`;
    store.setMeta("kernel_id", id);
  }
  return id;
}

/** The journal's actor for the admin persona the kernel creates at its first start. */
export const FIRST_START_ACTOR = "the kernel's first start";

/** Registers the admin persona and writes its identity file (0600) on first start. */
export function ensureAdmin(home: string, store: SqliteStore, admin: string): string {
  const path = join(home, HOME_FILES.adminIdentity);
  // The identity is written under this name first and named only once its key is registered: a
  // kernel killed between the two never leaves an identity file whose persona is not registered.
  const pending = `${path}.new`;
  if (!store.getPersona(admin)) {
    if (existsSync(path))
      throw new Error(`${path} exists but persona ${admin} is not registered; remove the file or register it`);
    // A first start killed before its commit: the identity it was about to register was never used.
    removeIfPresent(pending);
    const id = generateIdentity(admin);
    writeSecret(pending, serializeIdentity(id));
    store.withJournal(
      {
        actor: FIRST_START_ACTOR,
        op: "persona.register",
        target: `persona://${admin}`,
        message: `admin persona created with a new identity file (key ${Buffer.from(id.publicKey).toString("base64url")})`,
      },
      () => store.addPersona(admin, id.publicKey),
    );
  }
  if (existsSync(pending)) {
    // Registered, and (if killed before this) not yet named: named now, if it holds the registered key.
    const registered = store.getPersona(admin);
    if (!existsSync(path) && registered) {
      const id = parseIdentity(readRegularFile(pending, 64 * 1024).toString("utf8"));
      if (id.persona === admin && Buffer.from(id.publicKey).equals(Buffer.from(registered.publicKey))) linkSync(pending, path);
    }
    unlinkSync(pending);
  }
  return path;
}
