import { randomBytes } from "node:crypto";
import { existsSync, lstatSync, statSync } from "node:fs";
import { join } from "node:path";
import { escapeUnprintable } from "@kpip/protocol";
import type Database from "better-sqlite3";
import { takeLock } from "../file-lock.js";
import { ensurePrivateFile, readRegularFile, replaceAtomically, UnreadableFileError } from "../secure-files.js";

/** Token root keys by key id, kept in <home>/token-keys.json (0600). */
export interface RootKeyFile {
  current: string;
  keys: Record<string, { key: string; created: number; retired?: number }>;
}

export const ROOT_KEYS_FILE = "token-keys.json";

/** The lock every change of the key file holds from its read to its rename (an fcntl lock, through SQLite). */
export const ROOT_KEYS_LOCK = "token-keys.lock";

/** How long a key change waits for another one to finish (each takes milliseconds). */
const KEY_LOCK_WAIT_MS = 2000;

/** A key entry is ~100 bytes of JSON: 1 MiB holds thousands of rotations. */
const KEY_FILE_MAX_BYTES = 1024 * 1024;

/**
 * The token key file cannot be used: not a regular file, too large, too open, or not the JSON
 * the kernel writes. At start the kernel refuses to run.
 * On a re-read it verifies and mints nothing until the file is mended. The message is safe to
 * print: what the file held is shown escaped.
 */
export class KeyFileError extends Error {
  override name = "KeyFileError";
}

/** Text from the file (a JSON parse error quotes it) as a terminal or log line may show it. */

function checkShape(v: unknown, path: string): RootKeyFile {
  const bad = (why: string) => new KeyFileError(`token key file ${path} ${why}`);
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw bad("is not a JSON object");
  const f = v as { current?: unknown; keys?: unknown };
  if (typeof f.current !== "string") throw bad("names no current key");
  if (f.keys === null || typeof f.keys !== "object" || Array.isArray(f.keys)) throw bad("holds no keys");
  for (const [kid, k] of Object.entries(f.keys as Record<string, unknown>)) {
    const e = k as { key?: unknown; created?: unknown; retired?: unknown } | null;
    if (e === null || typeof e !== "object" || typeof e.key !== "string" || typeof e.created !== "number")
      throw bad(`has a malformed entry for key ${escapeUnprintable(JSON.stringify(kid))}`);
    if (e.retired !== undefined && typeof e.retired !== "number")
      throw bad(`has a malformed retirement for key ${escapeUnprintable(JSON.stringify(kid))}`);
  }
  if (!Object.hasOwn(f.keys, f.current)) throw bad("names a current key that it does not hold");
  return v as RootKeyFile;
}

/**
 * The kernel's token root keys. New tokens are minted with the current key; tokens minted
 * with an older key verify until they expire or that key is retired. Rotation and
 * retirement rewrite the file atomically; the kernel re-reads it when it meets a key id it
 * does not know, so a rotation made by `kpip token rotate-key` takes effect without a restart.
 */
export class RootKeys {
  private file: RootKeyFile;
  /** Which file was last read: inode, size and times (a rotation replaces the file, a new inode even within one clock tick). */
  private version = "";
  private checkedAt = 0;
  /** The version of a damaged file already reported: reported once, not at every re-read. */
  private damagedVersion: string | undefined;
  /** Why the file last read was unusable, until a re-read finds it whole again. */
  private broken: KeyFileError | undefined;

  /**
   * `onDamaged`: told when a re-read finds the file unusable (no key is used until it is mended);
   * `onChanged`: told when a re-read finds other keys than before (a rotation, a retirement, a
   * key added, removed or replaced, the file mended), so the kernel puts it on the record.
   */
  constructor(
    private readonly home: string,
    private readonly clock: () => number = Date.now,
    private readonly onDamaged: (e: KeyFileError) => void = () => {},
    private readonly onChanged: (c: RootKeyChange) => void = () => {},
  ) {
    this.file = RootKeys.load(home);
    this.version = fileVersion(RootKeys.path(home));
    this.checkedAt = clock();
  }

  /** Re-reads the key file if another process (kpip token rotate-key / retire-key) changed it; at most once a second. */
  private refresh(force = false, now = this.clock()): void {
    // A clock stepped back counts as time passed: otherwise the keys would freeze until it caught up.
    if (!force && Math.abs(now - this.checkedAt) < 1000) return;
    this.checkedAt = now;
    let m: string;
    try {
      m = fileVersion(RootKeys.path(this.home));
    } catch (e) {
      return this.damaged(
        new KeyFileError(`token key file ${RootKeys.path(this.home)} cannot be read: ${(e as Error).message}`),
        "missing",
      );
    }
    // Read again only when the file changed since it was last read (or found damaged): a token
    // naming an unknown key forces this check, and a persona can present such tokens in a loop —
    // a stat each, not a read and parse of the file each.
    if (this.broken ? m !== this.damagedVersion : m !== this.version) {
      const before = this.file;
      const wasBroken = this.broken !== undefined;
      try {
        this.file = RootKeys.load(this.home, false);
      } catch (e) {
        if (e instanceof KeyFileError) return this.damaged(e, m);
        throw e;
      }
      this.version = m;
      this.damagedVersion = undefined;
      this.broken = undefined;
      const change = keyChange(before, this.file, wasBroken);
      if (change) this.onChanged(change);
    }
  }

  /**
   * The file turned unusable while the kernel runs (a FIFO put in its place, a truncated or
   * hand-edited file): no token verifies and none is minted until it is whole again. Keeping the
   * keys read before would keep honouring a key the damaged file may have retired; the rotate
   * and retire commands replace the file whole, so theirs is never seen half-written.
   */
  private damaged(e: KeyFileError, m: string): void {
    this.broken = e;
    if (this.damagedVersion === m) return;
    this.damagedVersion = m;
    this.onDamaged(e);
  }

  static path(home: string): string {
    return join(home, ROOT_KEYS_FILE);
  }

  /** The key file (created with a first key if absent and `create`); KeyFileError if unusable. */
  static load(home: string, create = true): RootKeyFile {
    const path = RootKeys.path(home);
    if (create && !existsSync(path)) {
      const kid = newKid();
      const file: RootKeyFile = {
        current: kid,
        keys: { [kid]: { key: randomBytes(32).toString("base64url"), created: Date.now() } },
      };
      RootKeys.save(home, file);
      return file;
    }
    let text: string;
    try {
      const mode = lstatSync(path).mode & 0o777;
      if ((mode & 0o077) !== 0) throw new KeyFileError(`token key file ${path} has mode ${mode.toString(8)}; it must be 0600`);
      // Regular and bounded: a FIFO put there would block the kernel's only thread.
      text = readRegularFile(path, KEY_FILE_MAX_BYTES).toString("utf8");
    } catch (e) {
      if (e instanceof KeyFileError) throw e;
      if (e instanceof UnreadableFileError) throw new KeyFileError(`token key file ${e.message}`);
      throw new KeyFileError(`token key file ${path} cannot be read: ${(e as Error).message}`);
    }
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      throw new KeyFileError(`token key file ${path} is not JSON: ${escapeUnprintable((e as Error).message)}`);
    }
    return checkShape(v, path);
  }

  static save(home: string, file: RootKeyFile): void {
    const path = RootKeys.path(home);
    replaceAtomically(path, `${JSON.stringify(file, null, 2)}\n`);
  }

  /** Adds a new current key; older keys stay valid until retired. */
  static rotate(home: string): string {
    return RootKeys.changing(home, () => {
      // Never made here: a home whose key file is gone would get one holding only the new key, and
      // every token the kernel issued would stop verifying at its next read of the file.
      const file = RootKeys.load(home, false);
      const kid = newKid();
      file.keys[kid] = { key: randomBytes(32).toString("base64url"), created: Date.now() };
      file.current = kid;
      RootKeys.save(home, file);
      return kid;
    });
  }

  /** Retires a key: tokens signed with it stop verifying. The current key cannot be retired. */
  static retire(home: string, kid: string): void {
    RootKeys.changing(home, () => {
      const file = RootKeys.load(home, false);
      const k = file.keys[kid];
      if (!k) throw new KeyFileError(`no root key ${escapeUnprintable(JSON.stringify(kid))} in ${RootKeys.path(home)}`);
      if (file.current === kid) throw new KeyFileError(`${kid} is the current key: rotate first`);
      k.retired = Date.now();
      RootKeys.save(home, file);
    });
  }

  /**
   * Runs a read-modify-write of the key file under {@link ROOT_KEYS_LOCK}. Two changes at once
   * (two operators, a rotation job beside a retirement) each wrote what it had read plus its own
   * change, and one temp file: the later rename undid the other — a retired leaked key valid
   * again, or a new current key gone with the tokens it signed. The lock is the operating
   * system's (released however its holder dies); a change waits briefly, then is refused.
   */
  private static changing<T>(home: string, change: () => T): T {
    const lockPath = join(home, ROOT_KEYS_LOCK);
    let db: Database.Database;
    try {
      ensurePrivateFile(lockPath);
      db = takeLock(lockPath, KEY_LOCK_WAIT_MS, false);
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_BUSY")
        throw new KeyFileError(`another change of the token key file is in progress (${lockPath} is locked); try again`);
      throw new KeyFileError(`cannot lock the token key file (${lockPath}): ${escapeUnprintable((e as Error).message)}`);
    }
    try {
      return change();
    } finally {
      db.close();
    }
  }

  /** The ids of the keys as last read (kernel.start's record). */
  summary(): { current: string; keys: number; retired: number } {
    return keySummary(this.file);
  }

  get currentKid(): string {
    this.refresh();
    if (this.broken) throw this.broken;
    return this.file.current;
  }

  current(): { kid: string; key: Buffer } {
    this.refresh();
    if (this.broken) throw this.broken;
    return { kid: this.file.current, key: Buffer.from(this.file.keys[this.file.current]?.key ?? "", "base64url") };
  }

  /**
   * Whether `kid` names a key that is neither unknown nor retired, without decoding it: the check
   * on every use of a verified grant (a bound handle's included), which must not cost a decode.
   * `now`: the caller's clock reading, if it has one (no second one per request).
   */
  usable(kid: string, now?: number): boolean {
    this.refresh(false, now);
    if (this.broken) return false;
    const k = this.file.keys[kid];
    return k !== undefined && k.retired === undefined;
  }

  /**
   * Whether the key file, whole, marks `kid` retired: what runs under a token it signed is ended
   * then. A damaged file (case 430) refuses every token for as long as it is damaged, but ends
   * nothing: it may be mended.
   */
  retired(kid: string, now?: number): boolean {
    this.refresh(false, now);
    return !this.broken && this.file.keys[kid]?.retired !== undefined;
  }

  /** The key for `kid`, or undefined if unknown or retired. */
  get(kid: string): Buffer | undefined {
    this.refresh();
    let k = this.file.keys[kid];
    if (!k) {
      this.refresh(true);
      k = this.file.keys[kid];
    }
    if (this.broken || !k || k.retired !== undefined) return undefined;
    return Buffer.from(k.key, "base64url");
  }
}

/** What a re-read of the key file changed: key ids only, never key bytes. */
export interface RootKeyChange {
  current: string;
  /** The current key before, when it changed. */
  previous?: string;
  added: string[];
  retired: string[];
  removed: string[];
  /** Key ids kept whose key bytes are other than before (the file rewritten by someone else than kpip). */
  replaced: string[];
  /** The file was unusable before this read (it is whole again). */
  mended?: boolean;
  keys: number;
}

/** The differences between two readings of the key file, or undefined when the keys are the same. */
export function keyChange(before: RootKeyFile, after: RootKeyFile, mended = false): RootKeyChange | undefined {
  const added: string[] = [];
  const retired: string[] = [];
  const replaced: string[] = [];
  for (const [kid, k] of Object.entries(after.keys)) {
    const old = Object.hasOwn(before.keys, kid) ? before.keys[kid] : undefined;
    if (!old) added.push(kid);
    else {
      if (old.key !== k.key) replaced.push(kid);
      if (k.retired !== undefined && old.retired === undefined) retired.push(kid);
    }
  }
  const removed = Object.keys(before.keys).filter((kid) => !Object.hasOwn(after.keys, kid));
  const previous = before.current !== after.current ? before.current : undefined;
  if (!mended && !previous && !added.length && !retired.length && !removed.length && !replaced.length) return undefined;
  return {
    current: after.current,
    ...(previous !== undefined ? { previous } : {}),
    added,
    retired,
    removed,
    replaced,
    ...(mended ? { mended } : {}),
    keys: Object.keys(after.keys).length,
  };
}

/** The key file's ids for the kernel.start record: the current one, how many, how many retired. */
export function keySummary(f: RootKeyFile): { current: string; keys: number; retired: number } {
  const all = Object.values(f.keys);
  return { current: f.current, keys: all.length, retired: all.filter((k) => k.retired !== undefined).length };
}

function newKid(): string {
  return `k${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
}

function fileVersion(path: string): string {
  const st = statSync(path, { bigint: true });
  return `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}
