import { randomBytes } from "node:crypto";
import { existsSync, lstatSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { replaceAtomically } from "../secure-files.js";

/** Token root keys by key id, kept in <home>/token-keys.json (0600). */
export interface RootKeyFile {
  current: string;
  keys: Record<string, { key: string; created: number; retired?: number }>;
}

export const ROOT_KEYS_FILE = "token-keys.json";

/**
 * The kernel's token root keys. New tokens are minted with the current key; tokens minted
 * with an older key verify until they expire or that key is retired. Rotation and
 * retirement rewrite the file atomically; the kernel re-reads it when it meets a key id it
 * does not know, so a rotation made by `kpip token rotate-key` takes effect without a restart.
 */
export class RootKeys {
  private file: RootKeyFile;
  private mtime = 0;
  private checkedAt = 0;

  constructor(
    private readonly home: string,
    private readonly clock: () => number = Date.now,
  ) {
    this.file = RootKeys.load(home);
    this.mtime = statSync(RootKeys.path(home)).mtimeMs;
    this.checkedAt = clock();
  }

  /** Re-reads the key file if another process (kpip token rotate-key / retire-key) changed it; at most once a second. */
  private refresh(force = false, now = this.clock()): void {
    // A clock stepped back counts as time passed: otherwise the keys would freeze until it caught up.
    if (!force && Math.abs(now - this.checkedAt) < 1000) return;
    this.checkedAt = now;
    const m = statSync(RootKeys.path(this.home)).mtimeMs;
    if (m !== this.mtime || force) {
      this.file = RootKeys.load(this.home);
      this.mtime = m;
    }
  }

  static path(home: string): string {
    return join(home, ROOT_KEYS_FILE);
  }

  static load(home: string): RootKeyFile {
    const path = RootKeys.path(home);
    if (!existsSync(path)) {
      const kid = newKid();
      const file: RootKeyFile = {
        current: kid,
        keys: { [kid]: { key: randomBytes(32).toString("base64url"), created: Date.now() } },
      };
      RootKeys.save(home, file);
      return file;
    }
    const mode = lstatSync(path).mode & 0o777;
    if ((mode & 0o077) !== 0) throw new Error(`${path} has mode ${mode.toString(8)}; it must be 0600`);
    const file = JSON.parse(readFileSync(path, "utf8")) as RootKeyFile;
    if (!file.keys?.[file.current]) throw new Error(`${path} names a current key that it does not hold`);
    return file;
  }

  static save(home: string, file: RootKeyFile): void {
    const path = RootKeys.path(home);
    replaceAtomically(path, `${JSON.stringify(file, null, 2)}\n`);
  }

  /** Adds a new current key; older keys stay valid until retired. */
  static rotate(home: string): string {
    const file = RootKeys.load(home);
    const kid = newKid();
    file.keys[kid] = { key: randomBytes(32).toString("base64url"), created: Date.now() };
    file.current = kid;
    RootKeys.save(home, file);
    return kid;
  }

  /** Retires a key: tokens signed with it stop verifying. The current key cannot be retired. */
  static retire(home: string, kid: string): void {
    const file = RootKeys.load(home);
    const k = file.keys[kid];
    if (!k) throw new Error(`no root key ${kid}`);
    if (file.current === kid) throw new Error(`${kid} is the current key: rotate first`);
    k.retired = Date.now();
    RootKeys.save(home, file);
  }

  get currentKid(): string {
    this.refresh();
    return this.file.current;
  }

  current(): { kid: string; key: Buffer } {
    this.refresh();
    return { kid: this.file.current, key: Buffer.from(this.file.keys[this.file.current]?.key ?? "", "base64url") };
  }

  /**
   * Whether `kid` names a key that is neither unknown nor retired, without decoding it: the check
   * on every use of a verified grant (a bound handle's included), which must not cost a decode.
   * `now`: the caller's clock reading, if it has one (no second one per request).
   */
  usable(kid: string, now?: number): boolean {
    this.refresh(false, now);
    const k = this.file.keys[kid];
    return k !== undefined && k.retired === undefined;
  }

  /** The key for `kid`, or undefined if unknown or retired. */
  get(kid: string): Buffer | undefined {
    this.refresh();
    let k = this.file.keys[kid];
    if (!k) {
      this.refresh(true);
      k = this.file.keys[kid];
    }
    if (!k || k.retired !== undefined) return undefined;
    return Buffer.from(k.key, "base64url");
  }
}

function newKid(): string {
  return `k${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
}
