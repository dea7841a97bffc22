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
    private readonly store: PersonaStore,
    /** A persona whose key the store still holds but is gone (an ended agent's, its removal kept back by a full disk). */
    private readonly gone: (persona: string) => boolean = () => false,
  ) {}

  lookup(persona: string): { raw: Uint8Array; key: KeyObject | string; createdAt: number } | undefined {
    if (this.gone(persona)) return undefined;
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
