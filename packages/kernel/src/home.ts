import { createPrivateKey, generateKeyPairSync, type KeyObject, randomUUID } from "node:crypto";
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateIdentity, serializeIdentity, tokenToString } from "@kpip/protocol";
import type { CapEnforcer } from "./auth/enforcer.js";
import type { SqliteStore } from "./store/sqlite.js";

/** File names inside the kernel home. */
export const HOME_FILES = {
  database: "kernel.db",
  kernelKey: "kernel.key",
  adminIdentity: "admin.identity",
  adminToken: "admin.token",
} as const;

/** How long the admin's root token lives; renew it by deleting the file and restarting. */
const ADMIN_TOKEN_TTL_MS = 10 * 365 * 24 * 3600 * 1000;

/**
 * Mints the admin persona's root token (every op on every target) on first start and keeps
 * it in <home>/admin.token (0600). Even the admin acts only through a capability.
 */
export function ensureAdminToken(home: string, enforcer: CapEnforcer, admin: string): string {
  const path = join(home, HOME_FILES.adminToken);
  if (!existsSync(path)) {
    const t = enforcer.mint(undefined, "kernel", {
      sub: admin,
      rights: [{ ops: ["**"], targets: ["**"] }],
      ttlMs: ADMIN_TOKEN_TTL_MS,
    });
    writeSecret(path, `${tokenToString(t)}\n`);
  }
  return path;
}

/** Another live kernel owns this home; this one does not start. */
export class HomeInUseError extends Error {
  override name = "HomeInUseError";
}

/**
 * Takes the home for this process: `<home>/kernel.pid`, created exclusively. Two kernels on one
 * home would both append to the audit chain and fork it, whatever sockets they listen on. A
 * file left by a kernel that died (kill -9) names a process that is gone and is replaced.
 * Returns the release, which removes the file only while it is still this process's.
 */
export function acquireHome(home: string): () => void {
  const path = join(home, "kernel.pid");
  // Kernels embedded in one process share its pid: they are told apart here.
  if (heldHomes.has(path)) throw new HomeInUseError(`kernel home ${home} is in use by another kernel in this process`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(path, `${process.pid}\n`, { mode: 0o600, flag: "wx" });
      heldHomes.add(path);
      return () => {
        heldHomes.delete(path);
        try {
          if (readFileSync(path, "utf8").trim() === String(process.pid)) unlinkSync(path);
        } catch {
          // already gone
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const owner = Number.parseInt(readFileSync(path, "utf8"), 10);
    if (Number.isSafeInteger(owner) && owner > 0 && owner !== process.pid && alive(owner)) {
      throw new HomeInUseError(
        `kernel home ${home} is in use by process ${owner} (${path}); stop that kernel, or remove the file if no kernel runs`,
      );
    }
    // Left by a kernel that is gone (or by an earlier process that had this pid).
    try {
      unlinkSync(path);
    } catch {
      // another starter removed it first; try again
    }
  }
  throw new HomeInUseError(`kernel home ${home}: could not take ${path} (another kernel starting at the same time?)`);
}

const heldHomes = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Creates the home directory (0700) if needed and refuses one others can write to. */
export function ensureHome(home: string): void {
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const st = lstatSync(home);
  if (!st.isDirectory()) throw new Error(`kernel home ${home} is not a directory`);
  if ((st.mode & 0o022) !== 0) chmodSync(home, st.mode & 0o755 & ~0o022);
}

/** Writes a secret file with mode 0600, never replacing an existing one. */
export function writeSecret(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600, flag: "wx" });
  chmodSync(path, 0o600);
}

/** Loads the kernel's Ed25519 signing key, creating it (0600) on first start. */
export function loadKernelKey(home: string): KeyObject {
  const path = join(home, HOME_FILES.kernelKey);
  if (!existsSync(path)) {
    const { privateKey } = generateKeyPairSync("ed25519");
    writeSecret(path, privateKey.export({ format: "pem", type: "pkcs8" }) as string);
  }
  const mode = lstatSync(path).mode & 0o777;
  if ((mode & 0o077) !== 0) throw new Error(`kernel key ${path} has mode ${mode.toString(8)}; it must be 0600`);
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

/** Registers the admin persona and writes its identity file (0600) on first start. */
export function ensureAdmin(home: string, store: SqliteStore, admin: string): string {
  const path = join(home, HOME_FILES.adminIdentity);
  if (!store.getPersona(admin)) {
    if (existsSync(path))
      throw new Error(`${path} exists but persona ${admin} is not registered; remove the file or register it`);
    const id = generateIdentity(admin);
    writeSecret(path, serializeIdentity(id));
    store.withJournal(
      {
        actor: "the kernel's first start",
        op: "persona.register",
        target: `persona://${admin}`,
        message: "admin persona created with a new identity file",
      },
      () => store.addPersona(admin, id.publicKey),
    );
  }
  return path;
}
