import { createPublicKey } from "node:crypto";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { KpipError } from "@kpip/client";
import {
  ConfigError,
  DamagedDatabaseError,
  HOME_FILES,
  isAgentPersona,
  type JournalEntry,
  type KernelConfig,
  kernelAnswers,
  removalRefusal,
  removePersonaTree,
  resolveConfig,
  SqliteStore,
  writeSecret,
} from "@kpip/kernel";
import { generateIdentity, isPersonaId, parseIdentity, publicKeyFault, rawPublicKey, serializeIdentity } from "@kpip/protocol";
import { readRegularFile } from "@kpip/protocol/regular-file";
import { printable } from "../audit/printable.js";
import type { Command, Values } from "../command.js";
import { CONNECT_OPTIONS, connectFromFlags } from "../connect.js";
import { checkHomeToWrite } from "../home-check.js";
import { subcommandError } from "../suggest.js";
import { EXIT, isoTime, placeNew, printTable, resolveHome, UsageError } from "../util.js";
import { actor } from "./actor.js";

function openStore(home: string): SqliteStore {
  const path = join(home, HOME_FILES.database);
  if (!existsSync(path))
    throw new UsageError(
      `no kernel home at ${home} (no ${HOME_FILES.database}) — start a kernel once with \`npm start\` or pass --home`,
    );
  try {
    return new SqliteStore(path);
  } catch (e) {
    if (e instanceof DamagedDatabaseError) throw new UsageError(e.message);
    throw e;
  }
}

/** Reads a public key from an identity file, a PEM SPKI file, or a base64url text of 32 bytes. */
function readPublicKey(file: string): Uint8Array {
  let text: string;
  try {
    // A regular file, bounded: one a persona handed over may be a FIFO or /dev/zero.
    text = readRegularFile(file, 64 * 1024)
      .toString("utf8")
      .trim();
  } catch (e) {
    throw new UsageError(`cannot read --public-key file: ${(e as Error).message}`);
  }
  try {
    return parsePublicKey(text);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    // Malformed JSON or PEM is the file's fault, not an internal error.
    throw new UsageError(`--public-key ${file}: ${(e as Error).message}`);
  }
}

function parsePublicKey(text: string): Uint8Array {
  if (text.startsWith("{")) {
    const doc = JSON.parse(text) as { publicKey?: string; privateKey?: string };
    if (doc.privateKey !== undefined) return parseIdentity(text).publicKey;
    if (typeof doc.publicKey === "string") text = doc.publicKey;
  }
  if (text.startsWith("-----BEGIN PUBLIC KEY-----")) {
    const key = createPublicKey(text);
    if (key.asymmetricKeyType !== "ed25519") throw new UsageError("the public key must be Ed25519");
    text = Buffer.from(rawPublicKey(key)).toString("base64url");
  }
  const raw = Buffer.from(text, "base64url");
  if (raw.length !== 32)
    throw new UsageError("the public key must be 32 bytes of base64url, a PEM SPKI key, or an identity file");
  // As persona.register checks it, for the offline change too: any 32 bytes are not a key, and
  // a small-order point verifies signatures anyone can make.
  const fault = publicKeyFault(raw);
  if (fault !== undefined) throw new UsageError(`the public key is not a usable Ed25519 public key: ${fault}`);
  return raw;
}

const json = { type: "boolean" as const, description: "print JSON" };

type Outcome = { ok: true } | { ok: false; message: string };
type Journal = (op: string, target: string, message: string) => JournalEntry;

/** The home's settings (socket, admin persona) as the kernel itself reads them. */
function settings(v: Values, home: string): KernelConfig {
  try {
    return resolveConfig({ flags: { home, ...(v.socket !== undefined ? { socket: v.socket } : {}) } });
  } catch (e) {
    if (e instanceof ConfigError) throw new UsageError(e.message);
    throw e;
  }
}

/**
 * One registry change: through the running kernel when there is one (an op like any other,
 * authorized by the admin's token and on the audit record), otherwise on the home database
 * with an offline journal entry in the same transaction, which the kernel moves into the audit
 * chain when it next runs (or within a tick, if one is running on another socket).
 */
async function change(
  v: Values,
  home: string,
  online: (call: (op: string, target: string, args?: Record<string, unknown>) => Promise<unknown>) => Promise<void>,
  offline: (store: SqliteStore, journal: Journal, cfg: KernelConfig) => Outcome,
): Promise<Outcome & { via: "kernel" | "offline" }> {
  const cfg = settings(v, home);
  if (await kernelAnswers(cfg.socket)) {
    const client = await connectFromFlags({ ...v, socket: cfg.socket });
    try {
      await online((op, target, args) => client.call(op, target, (args ?? {}) as never));
      return { ok: true, via: "kernel" };
    } catch (e) {
      if (e instanceof KpipError) return { ok: false, via: "kernel", message: `${e.errorClass}: ${e.message}` };
      throw e;
    } finally {
      await client.close();
    }
  }
  const store = openStore(home);
  try {
    const who = actor("kpip persona");
    return { ...offline(store, (op, target, message) => ({ actor: who, op, target, message }), cfg), via: "offline" };
  } finally {
    store.close();
  }
}

function register(v: Values, home: string, pid: string, key: Uint8Array, message: string) {
  return change(
    v,
    home,
    async (call) => {
      await call("persona.register", `persona://${pid}`, { publicKey: key });
    },
    (store, journal): Outcome => {
      if (isAgentPersona(pid))
        return { ok: false, message: `${pid} is in the agent namespace: only the kernel's agents act there` };
      if (store.getPersona(pid)) return { ok: false, message: `${pid} is already registered` };
      // The key on the record, as each session.open names the key it attested with.
      const keyed = `${message} (key ${Buffer.from(key).toString("base64url")})`;
      store.withJournal(journal("persona.register", `persona://${pid}`, keyed), () => store.addPersona(pid, key));
      return { ok: true };
    },
  );
}

const via = (r: { via: "kernel" | "offline" }) =>
  r.via === "kernel" ? "through the kernel (audited)" : "offline (audited when the kernel next runs)";

export const personaCommand: Command = {
  name: "persona",
  summary: "manage the persona registry: create, add, list, remove",
  usage:
    "kpip persona create <id> [--out F] | add <id> --public-key F | list | remove <id>  [--home DIR] [--socket S] [--identity F] [--token T] [--json]",
  example: "kpip persona create alice --json",
  options: {
    ...CONNECT_OPTIONS,
    json,
    out: { type: "string", description: "create: where to write the identity file (default <home>/personas/<id>.identity)" },
    "public-key": { type: "string", description: "add: file holding the persona's Ed25519 public key" },
  },
  async run(v, pos) {
    const [sub, id, ...extra] = pos;
    if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
    const h = resolveHome(v.home as string | undefined);
    // Before anything is read or written there (offline or through a kernel: identity files go in it).
    if (["create", "add", "list", "remove"].includes(sub ?? "")) checkHomeToWrite(h);
    const asJson = v.json === true;
    const needId = (): string => {
      if (!id) throw new UsageError(`persona ${sub} needs a persona id`);
      if (!isPersonaId(id))
        throw new UsageError(`invalid persona id ${JSON.stringify(id)} (lowercase names separated by /, e.g. alice/worker-1)`);
      return id;
    };
    switch (sub) {
      case "create": {
        const pid = needId();
        const file = resolve((v.out as string | undefined) ?? identityPath(h, pid));
        if (existsSync(file)) {
          const holder = v.out === undefined ? identityOf(file) : pid;
          process.stderr.write(
            holder === pid
              ? `kpip persona: persona ${pid} already exists here: its identity file ${file} is in place (remove the persona first, or --out another file)\n`
              : `kpip persona: the default identity file of ${pid}, ${file}, is taken${holder ? ` by persona ${printable(holder)}'s identity (ids that differ by "/" and "__" share it)` : ""}: pass --out another file\n`,
          );
          return EXIT.FAILED;
        }
        mkdirSync(join(file, ".."), { recursive: true, mode: 0o700 });
        const identity = generateIdentity(pid);
        // Written beside its place first: the identity file appears only once the key is registered.
        const tmp = `${file}.${process.pid}.tmp`;
        try {
          writeSecret(tmp, serializeIdentity(identity));
        } catch (e) {
          throw new UsageError(`cannot write ${file}: ${(e as Error).message}`);
        }
        let r: Awaited<ReturnType<typeof change>>;
        try {
          r = await register(v, h, pid, identity.publicKey, "created with kpip persona create");
        } catch (e) {
          rmSync(tmp, { force: true });
          throw e;
        }
        if (!r.ok) {
          rmSync(tmp, { force: true });
          process.stderr.write(`kpip persona: ${printable(r.message)}\n`);
          return EXIT.FAILED;
        }
        // A rename would replace a file made at `file` while the key was registered (the check
        // above is earlier): the identity stays at its temporary name instead, and the operator is told.
        if (!placeNew(tmp, file)) {
          process.stderr.write(
            `kpip persona: persona ${pid} is registered, but ${file} appeared meanwhile and was left alone: its identity file is ${tmp}\n`,
          );
          return EXIT.FAILED;
        }
        const publicKey = Buffer.from(identity.publicKey).toString("base64url");
        if (asJson) process.stdout.write(`${JSON.stringify({ persona: pid, identity: file, publicKey, via: r.via })}\n`);
        else
          process.stdout.write(
            `created persona ${pid} ${via(r)}\n  identity file: ${file} (keep it secret: mode 0600)\n  public key:    ${publicKey}\n`,
          );
        return EXIT.OK;
      }
      case "add": {
        const pid = needId();
        if (v["public-key"] === undefined) throw new UsageError("persona add needs --public-key <file>");
        const key = readPublicKey(v["public-key"] as string);
        const r = await register(v, h, pid, key, "registered with kpip persona add");
        if (!r.ok) {
          process.stderr.write(`kpip persona: ${printable(r.message)}\n`);
          return EXIT.FAILED;
        }
        if (asJson)
          process.stdout.write(
            `${JSON.stringify({ persona: pid, publicKey: Buffer.from(key).toString("base64url"), via: r.via })}\n`,
          );
        else process.stdout.write(`registered persona ${pid} ${via(r)}\n`);
        return EXIT.OK;
      }
      case "list": {
        if (id) throw new UsageError("persona list takes no id");
        const store = openStore(h);
        try {
          const rows = store.listPersonas().map((p) => ({
            persona: p.id,
            publicKey: Buffer.from(p.publicKey).toString("base64url"),
            created: isoTime(p.createdAt),
          }));
          if (asJson) process.stdout.write(`${JSON.stringify(rows)}\n`);
          else
            printTable(
              ["PERSONA", "PUBLIC KEY", "CREATED (UTC)"],
              rows.map((r) => [r.persona, r.publicKey, r.created]),
            );
          return EXIT.OK;
        } finally {
          store.close();
        }
      }
      case "remove": {
        const pid = needId();
        const r = await change(
          v,
          h,
          async (call) => {
            await call("persona.remove", `persona://${pid}`);
          },
          (store, journal, cfg): Outcome => {
            const refusal = removalRefusal(pid, cfg.adminPersona);
            if (refusal) return { ok: false, message: refusal };
            if (!store.getPersona(pid)) return { ok: false, message: `${pid} is not registered` };
            // The record names every persona removed and every token the removal ended, as the
            // kernel's own removal does (a responder reads what ended from the audit log alone).
            const ended: string[] = [];
            store.withJournal(
              (r) => journal("persona.remove", `persona://${pid}`, removalMessage(r.removed, ended)),
              () =>
                removePersonaTree(
                  store,
                  pid,
                  (tokens) => {
                    for (const t of tokens) store.revokeToken(t, "kpip persona remove", Date.now());
                    ended.push(...tokens);
                  },
                  undefined,
                  cfg.adminPersona,
                ),
            );
            return { ok: true };
          },
        );
        if (!r.ok) {
          process.stderr.write(`kpip persona: ${printable(r.message)}\n`);
          return EXIT.FAILED;
        }
        // The identity file stays (it is the persona's, not the registry's), but its key now opens nothing.
        // Only if that file is this persona's: `a/b` and `a__b` share a default name, and the
        // operator told to delete the other one's identity would lose a key still registered.
        const idFile = identityPath(h, pid);
        const leftover = identityOf(idFile) === pid ? idFile : undefined;
        if (asJson) process.stdout.write(`${JSON.stringify({ removed: pid, via: r.via, identityFile: leftover ?? null })}\n`);
        else
          process.stdout.write(
            `removed persona ${pid} and its sub-personas ${via(r)}; ${r.via === "kernel" ? "their sessions were ended and their tokens revoked" : "their tokens are revoked"}\n${
              leftover
                ? `  the identity file ${leftover} is left in place; its key no longer opens a session — delete it if it is not needed\n`
                : ""
            }`,
          );
        return EXIT.OK;
      }
      default:
        throw subcommandError("persona", sub, ["create", "add", "list", "remove"]);
    }
  },
};

/** Where `persona create` writes a persona's identity file by default. */
function identityPath(home: string, persona: string): string {
  return join(home, "personas", `${persona.replaceAll("/", "__")}.identity`);
}

/** The persona an identity file names, or undefined (no file, not an identity, unreadable). */
function identityOf(file: string): string | undefined {
  try {
    const doc = JSON.parse(readRegularFile(file, 64 * 1024).toString("utf8")) as { persona?: unknown };
    return typeof doc.persona === "string" ? doc.persona : undefined;
  } catch {
    return undefined;
  }
}

/** The offline removal's journal message: the personas removed and the tokens it ended (ids, at most 200 listed). */
function removalMessage(personas: string[], tokens: string[]): string {
  const listed = tokens.slice(0, 200).join(", ");
  const more = tokens.length > 200 ? ` and ${tokens.length - 200} more` : "";
  return `removed with kpip persona remove: personas ${personas.join(", ")}; tokens ended: ${listed || "none"}${more}`;
}
