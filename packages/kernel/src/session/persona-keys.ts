import type { KeyObject } from "node:crypto";
import { publicKeyFault, publicKeyFromRaw } from "@kpip/protocol";
import { CACHE_ENTRIES } from "../limits.js";
import type { PersonaStore } from "../store/types.js";

/**
 * Looks personas up in the store on every attestation (so a removal takes effect at once,
 * even when made by another process), and caches the parsed key objects: parsing a key
 * costs more than verifying a signature with it.
 */
export class PersonaKeys {
  /** A parsed key, or why the registered bytes are no usable key (a registry written before the check, or by hand). */
  private readonly cache = new Map<string, KeyObject | string>();

  constructor(
    /** The registered keys, a key the store still holds but is gone hidden (AgentManager.registry). */
    private readonly store: Pick<PersonaStore, "getPersona">,
    /** The offline journal's stamp (JournalStore.journalStamp): another means the registry may have changed without the kernel. */
    private readonly readStamp: () => string = () => "",
    /**
     * Watches the stamp's file (JournalStore.watchJournalStamp): `changed` at each change, `lost`
     * when the watch ends (the file replaced). False: not watched.
     */
    watchStamp?: (changed: () => void, lost: () => void) => boolean,
  ) {
    this.watched =
      watchStamp?.(
        () => {
          this.cached = undefined;
        },
        () => {
          this.watched = false;
          this.cached = undefined;
        },
      ) ?? false;
  }

  /** Whether a watch tells of every change of the stamp's file: then it is read only after one. */
  private watched: boolean;
  /** The stamp as last read ({@link stamp}). */
  private cached: string | undefined;

  /**
   * The offline journal's stamp. Read (a stat) again after every registry lookup and, while its
   * file is watched, after each change the watch reports — no system call per request; unwatched,
   * at most once an event-loop turn. Sound for what it guards (a read showing the id's new
   * holder's items): those are made by the new holder's requests, read after its attestation,
   * whose lookup found the committed registration — so the stamp they are compared with is read
   * after it.
   */
  stamp(): string {
    if (this.cached === undefined) {
      this.cached = this.readStamp();
      if (!this.watched)
        setImmediate(() => {
          this.cached = undefined;
        });
    }
    return this.cached;
  }

  /**
   * The persona's registered key. `restamp` (an attestation's lookup): what it finds may be newer
   * than the stamp read before, which is read again after it; a session's own check of its
   * registration ({@link sameRegistration}) compares with a stamp it read first and need not.
   */
  lookup(persona: string, restamp = true): { raw: Uint8Array; key: KeyObject | string; createdAt: number } | undefined {
    if (restamp) this.cached = undefined;
    const rec = this.store.getPersona(persona);
    if (!rec) return undefined;
    const hex = Buffer.from(rec.publicKey).toString("hex");
    let key = this.cache.get(hex);
    if (!key) {
      // A small-order key verifies a signature anyone can make: no attestation with it holds.
      key = publicKeyFault(rec.publicKey) ?? publicKeyFromRaw(rec.publicKey);
      if (this.cache.size > CACHE_ENTRIES.personaKeys) this.cache.clear();
      this.cache.set(hex, key);
    }
    return { raw: rec.publicKey, key, createdAt: rec.createdAt };
  }
}

/**
 * Whether `rec` is the registration a session attested under: its key, and its time when the
 * session knows it — one made since, even with the same key, is another holder's.
 */
export function sameRegistration(
  s: { readonly registeredAt: number | undefined; readonly attestedKey: Buffer | undefined },
  rec: { createdAt: number; publicKey: Uint8Array } | undefined,
): boolean {
  return (
    rec !== undefined &&
    (s.registeredAt === undefined || s.registeredAt === rec.createdAt) &&
    s.attestedKey?.equals(rec.publicKey) === true
  );
}
