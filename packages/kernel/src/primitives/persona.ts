import { isPersonaId, publicKeyFromRaw } from "@kpip/protocol";
import type { PersonaStore, TokenStore } from "../store/types.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

/** What the persona family needs from the kernel beyond the store. */
export interface PersonaFamilyHost {
  /** The kernel's admin persona: never removed through the kernel (it would lock the operator out). */
  admin: string;
  /** Revokes a token id for every handle at once (the enforcer's revocation, not just the store's). */
  revokeToken(id: string, by: string): void;
  /** Ends every open session of a removed persona; returns how many were ended. */
  expel(persona: string): number;
}

function personaTarget(ctx: OpContext): string {
  const id = ctx.target.segments.join("/");
  if (!isPersonaId(id)) throw new OpError("SEMANTIC", `${ctx.op} needs persona://<persona id>`);
  return id;
}

const personaRecord = (p: { id: string; publicKey: Uint8Array; createdAt: number }) => ({
  persona: p.id,
  publicKey: Buffer.from(p.publicKey),
  created: p.createdAt,
});

/**
 * persona.register / remove / list: the persona registry through the one audited door, so a
 * change of who may attest is on the record like any other act. Authority is the usual grant
 * over the op and `persona://<id>` (the admin's token covers all; a grant over
 * `persona://alice/**` lets alice manage her sub-personas).
 */
export function personaFamily(store: PersonaStore & TokenStore, host: PersonaFamilyHost): PrimitiveFamily {
  return {
    name: "persona",
    ops: [
      {
        op: "persona.register",
        description: "Register persona://<id> with its Ed25519 public key (32 bytes); it may attest at once.",
        targets: ["persona"],
        args: { publicKey: { type: "bytes", required: true, description: "the persona's raw Ed25519 public key" } },
        idempotent: false,
        effects: true,
        handler: (ctx): OpResult => {
          const id = personaTarget(ctx);
          const key = ctx.args.publicKey as Uint8Array;
          try {
            publicKeyFromRaw(key);
          } catch (e) {
            throw new OpError("SEMANTIC", `publicKey is not an Ed25519 public key: ${(e as Error).message}`);
          }
          if (store.getPersona(id)) throw new OpError("SEMANTIC", `persona ${id} is already registered`);
          store.addPersona(id, key);
          const rec = store.getPersona(id);
          return { status: "SUCCESS", payload: rec ? personaRecord(rec) : { persona: id } };
        },
      },
      {
        op: "persona.remove",
        description:
          "Remove persona://<id>: its open sessions end at once (ERROR AUTH PERSONA_REMOVED) and the tokens issued to it are revoked.",
        targets: ["persona"],
        args: {},
        idempotent: false,
        effects: true,
        handler: (ctx): OpResult => {
          const id = personaTarget(ctx);
          if (id === host.admin) throw new OpError("PERMISSION", `the kernel's admin persona ${id} cannot be removed`);
          if (id === ctx.persona) throw new OpError("PERMISSION", "a persona cannot remove itself");
          if (!store.removePersona(id)) throw new OpError("SEMANTIC", `persona ${id} is not registered`);
          // A later registration under the same id must not inherit what the old holder was given.
          let revoked = 0;
          for (const t of store.listTokens(id)) {
            if (t.revokedAt === null) {
              host.revokeToken(t.id, ctx.persona);
              revoked++;
            }
          }
          const sessions = host.expel(id);
          return { status: "SUCCESS", payload: { removed: id, sessionsEnded: sessions, tokensRevoked: revoked } };
        },
      },
      {
        op: "persona.list",
        description: "persona://<id> and its registered sub-personas, with their public keys.",
        targets: ["persona"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx): OpResult => {
          const id = personaTarget(ctx);
          const personas = store
            .listPersonas()
            .filter((p) => p.id === id || p.id.startsWith(`${id}/`))
            .map(personaRecord);
          return { status: "SUCCESS", payload: { personas } };
        },
      },
    ],
  };
}
