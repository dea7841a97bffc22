import { isPersonaId, personaList, personaRegister, personaRemove, personaWithin, publicKeyFault } from "@kpip/protocol";
import { isAgentPersona } from "../agents/namespace.js";
import { releaseAllocationsWithin } from "../resources/ledger.js";
import { inTree, registeredAbove, type TreeRoots, treeBoundRefusal } from "../resources/lineage.js";
import type { LedgerStore, OpStore, PersonaStore, TokenStore } from "../store/types.js";
import { implement } from "./implement.js";
import { pageAnswer, textPageRequest } from "./paging.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

/** What the persona family needs from the kernel beyond the store. */
export interface PersonaFamilyHost {
  /** The kernel's admin persona: never removed through the kernel (it would lock the operator out). */
  admin: string;
  /** Revokes token ids for every handle at once (the enforcer's revocation, not just the store's); returns every token ended. */
  revokeTokens(ids: string[], by: string): { ended: string[] };
  /**
   * The registry changed: ends every open session whose persona is no longer registered with
   * the key it attested with, and tells sessions holding revoked handles. Returns sessions ended.
   */
  registryChanged(): number;
  /** Most personas one persona tree may register (maxRegisteredPersonas; the admin is exempt). */
  maxRegistered: number;
  /** The top of each persona's tree; told when the registry changes. */
  roots: TreeRoots;
}

/** The registered personas at or under `id` (a range of the registry, not the whole of it). */
const personasUnder = (store: PersonaStore, id: string) => store.personasUnder(id);

/**
 * Why `id` may not be removed, if it may not: the admin persona (or a persona above it), and —
 * when a persona asks — itself or any persona above it.
 */
export function removalRefusal(id: string, admin: string, actor?: string): string | undefined {
  if (personaWithin(admin, id)) return `the kernel's admin persona ${admin} cannot be removed`;
  if (actor !== undefined && personaWithin(actor, id)) return "a persona cannot remove itself or a persona above it";
  return undefined;
}

/**
 * Removes `id` and every sub-persona under it (keys its holder may have registered), and
 * revokes every token minted for any id of that tree or by one of them — a sub-persona mints
 * from its parent's token too, for personas outside its own tree — so nothing the tree made
 * outlives it, and a later registration under one of these ids inherits nothing — nor do the
 * allocations they held, which are freed (their ids were told to them alone). One shared path
 * for the kernel op and the CLI's offline change.
 */
export function removePersonaTree(
  store: PersonaStore & TokenStore & LedgerStore & Pick<OpStore, "disownWork">,
  id: string,
  revoke: (tokenIds: string[]) => void,
  /** The persona asking (none: the operator): it and the personas above it are never removed with `id`. */
  actor?: string,
  /** The kernel's admin persona: never removed with `id` either, nor a persona above it (removalRefusal guards `id` alone). */
  admin?: string,
): { removed: string[]; tokensRevoked: number; allocationsFreed: number } {
  return removeTrees(store, [id], registrations(store, id, [actor, admin]), revoke);
}

/**
 * The personas an agent registered (persona.register under its spawner's tree, with a key it
 * generated and may have handed out), and what those registered in turn: removed with the
 * agent's key (AgentManager), as a removed persona's registrations are. Never the agent's own
 * id (its end removes its key), nor the ids under it.
 */
export function registrationsOf(
  store: PersonaStore,
  id: string,
  /**
   * Whether a persona found is the agent's to remove (false: another holder's, registered since):
   * judged as the cascade goes, so what one left out registered in turn is left out too.
   */
  keep: ((registered: string) => boolean) | undefined,
  /** The kernel's admin persona: never removed with the agent's registrations, nor a persona above it. */
  admin: string | undefined,
): string[] {
  return registrations(store, id, [admin], keep);
}

/**
 * Removes the trees `whole` (every persona under each) and the personas `alone` (each id alone:
 * a persona another registered under it stays, with its tokens, work and allocations), their
 * tokens revoked by `revoke` (minted for or by them), their work and allocations disowned.
 */
export function removeTrees(
  store: PersonaStore & TokenStore & LedgerStore & Pick<OpStore, "disownWork">,
  whole: string[],
  alone: string[],
  revoke: (tokenIds: string[]) => void,
): { removed: string[]; tokensRevoked: number; allocationsFreed: number } {
  const removed = [...whole.flatMap((r) => personasUnder(store, r).map((p) => p.id)), ...alone];
  const tokens = tokensOfRemoved(store, whole, alone);
  for (const p of removed) store.removePersona(p);
  // All at once: what each revocation ends is found in one pass, not one per token.
  revoke(tokens);
  let allocationsFreed = 0;
  for (const r of whole) {
    // Its ops' results, its agents' output and its token list are not a later registration's: the
    // tokens pass to the nearest persona above it still registered (one registered later sees none).
    store.disownWork(r);
    store.disownTokens(r, registeredAbove(store, r));
    allocationsFreed += releaseAllocationsWithin(store, r);
  }
  for (const r of alone) {
    store.disownWork(r, true);
    store.disownTokens(r, registeredAbove(store, r), true);
    allocationsFreed += releaseAllocationsWithin(store, r, true);
  }
  return { removed, tokensRevoked: tokens.length, allocationsFreed };
}

/** The unrevoked tokens minted for or by a persona of the trees `whole`, or for or by one of `alone` itself. */
export function tokensOfRemoved(store: TokenStore, whole: string[], alone: string[]): string[] {
  return [
    ...new Set([
      ...whole.flatMap((r) => store.unrevokedTokensOfTree(r)),
      // Minted for or by that id itself: one for a persona under it is that persona's.
      ...alone.flatMap((r) =>
        store.unrevokedTokensOfTree(r).filter((t) => {
          const rec = store.getToken(t);
          return rec === undefined || rec.sub === r || rec.mintedBy === r;
        }),
      ),
    ]),
  ];
}

/**
 * Every persona registered by an id in the tree `id` (the registrar's id, whether or not it is
 * still registered: an agent's key leaves the registry at its end, an earlier-removed
 * sub-persona's too, and what they registered stayed), then every persona one of those
 * registered, and so on — a persona registers anywhere under the top of its tree, beside itself
 * too, with a key its holder keeps: left registered, that holder would attest as it after the
 * removal and act on under any token its tree's top holds (usable by the personas under it).
 * Each alone, never the ids under it: where no persona holds an id above the registrar (case
 * 259's `team/alice` without `team`), it may register an id above itself, whose subtree holds
 * personas others registered (docs/architecture.md). Never a persona in the tree `id`, nor
 * one of `spared` (the one asking, the admin persona) or a persona above one. Bounded: a tree registers at most maxRegisteredPersonas; one
 * indexed read per persona found.
 */
function registrations(
  store: PersonaStore,
  id: string,
  /** Personas never removed, nor one above them: the one asking, the admin. */
  spared: readonly (string | undefined)[],
  keep?: (registered: string) => boolean,
): string[] {
  const kept = spared.filter((p): p is string => p !== undefined);
  const taken = new Set<string>();
  const found: string[] = [];
  const follow = (registered: string[]) => {
    for (const r of registered) {
      if (taken.has(r) || personaWithin(r, id) || kept.some((p) => personaWithin(p, r))) continue;
      taken.add(r);
      if (keep !== undefined && !keep(r)) continue;
      found.push(r);
    }
  };
  follow(store.registeredWithin(id));
  for (let i = 0; i < found.length; i++) follow(store.registeredBy(found[i] as string));
  return found;
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
export function personaFamily(
  store: PersonaStore & TokenStore & LedgerStore & Pick<OpStore, "disownWork">,
  host: PersonaFamilyHost,
): PrimitiveFamily {
  return {
    name: "persona",
    ops: [
      implement(personaRegister, {
        owns: (ctx) => {
          const id = personaTarget(ctx);
          if (isAgentPersona(id))
            return `${id} is in the agent namespace (a segment beginning "agent."): only the kernel's agents act there`;
          // A persona registers inside its own tree only, so every tree is the id range under its
          // root and a registered persona never starts a tree with bounds of its own. Only the
          // admin persona itself registers anywhere (as only it mints for another tree): its
          // sub-personas and agents register under its tree, or each persona they registered
          // outside — its key in their hands — was a tree with fresh bounds, enough to take every
          // session but the admin's reserve.
          if (ctx.persona === host.admin) return true;
          const root = host.roots.of(ctx.persona);
          return (
            (id !== root && inTree(id, root)) ||
            `${ctx.persona} registers personas under ${root} only (its tree): ${id} would start a tree of its own`
          );
        },
        handler: (ctx): OpResult => {
          const id = personaTarget(ctx);
          const key = ctx.args.publicKey;
          // OpenSSL takes any 32 bytes: the point itself is checked (a small-order key verifies
          // signatures anyone can make, so anyone could attest as the persona).
          const fault = key instanceof Uint8Array ? publicKeyFault(key) : "not bytes";
          if (fault !== undefined) throw new OpError("SEMANTIC", `publicKey is not a usable Ed25519 public key: ${fault}`);
          // Registered with the request's dedupe record: a retry after a crash is not "already registered".
          return ctx.atomically((): OpResult => {
            if (store.getPersona(id)) throw new OpError("SEMANTIC", `persona ${id} is already registered`);
            // Counted over the caller's whole tree: sub-personas (and agents) it delegated to
            // register against the same bound, so delegation does not multiply it.
            const root = host.roots.of(ctx.persona);
            const registered = ctx.persona === host.admin ? 0 : store.countRegisteredWithin(root);
            if (ctx.persona !== host.admin && registered >= host.maxRegistered) {
              throw new OpError(
                "RESOURCE",
                treeBoundRefusal(root, ctx.persona, {
                  held: (max, bound) => `has registered ${registered} personas (${bound} ${max})`,
                  what: "registered personas",
                  bound: "maxRegisteredPersonas",
                  limit: host.maxRegistered,
                }),
              );
            }
            store.addPersona(id, key, ctx.persona);
            const rec = store.getPersona(id);
            // The key on the record, as each session.open names the key it attested with.
            return {
              status: "SUCCESS",
              payload: rec ? personaRecord(rec) : { persona: id },
              audit: { key: Buffer.from(key).toString("base64url") },
            };
          });
        },
      }),
      implement(personaRemove, {
        owns: (ctx) => {
          const id = personaTarget(ctx);
          const refused = removalRefusal(id, host.admin, ctx.persona);
          if (refused !== undefined) return refused;
          // As registration: a persona removes inside its own tree only, whatever its grant's
          // patterns. Only the admin persona itself removes anywhere: its sub-personas and agents
          // (less trusted, given a broad grant) remove under the admin's tree, never another's.
          if (ctx.persona === host.admin) return true;
          const root = host.roots.of(ctx.persona);
          return inTree(id, root) || `${ctx.persona} removes personas under ${root} only (its tree): ${id} is not in it`;
        },
        handler: (ctx): OpResult => {
          const id = personaTarget(ctx);
          if (!store.getPersona(id)) throw new OpError("SEMANTIC", `persona ${id} is not registered`);
          const ended: string[] = [];
          const revoked: string[] = [];
          // Removed with the request's dedupe record: a retry after a crash is not "not registered".
          // Sessions and agents it ends stay ended if that commit fails: the safe side.
          return ctx.atomically((): OpResult => {
            const r = removePersonaTree(
              store,
              id,
              (tokens) => {
                ended.push(...host.revokeTokens(tokens, ctx.persona).ended);
                revoked.push(...tokens);
              },
              ctx.persona,
              host.admin,
            );
            const sessionsEnded = host.registryChanged();
            return {
              status: "SUCCESS",
              audit: { removed: r.removed, ended, ...(r.allocationsFreed ? { allocationsFreed: r.allocationsFreed } : {}) },
              payload: {
                removed: id,
                alsoRemoved: r.removed.filter((p) => p !== id),
                sessionsEnded,
                tokensRevoked: r.tokensRevoked,
              },
              // Refusals of what it ended name this record, as a token.revoke's do.
              ...(revoked.length ? { revoked } : {}),
            };
          });
        },
      }),
      implement(personaList, {
        handler: (ctx): OpResult => {
          const id = personaTarget(ctx);
          // The cursor is the last id shown: the next page is the ids after it in the subtree's range.
          const page = textPageRequest(ctx.args, "a persona list", /^.{1,255}$/s);
          if (page.cursor !== undefined && !personaWithin(page.cursor, id))
            throw new OpError("SEMANTIC", "cursor is not a persona list cursor of this persona");
          const rows = store.personasUnder(id, page.cursor ?? "", page.limit + 1);
          return pageAnswer(rows, page, "personas", personaRecord, (p) => p.id);
        },
      }),
    ],
  };
}
