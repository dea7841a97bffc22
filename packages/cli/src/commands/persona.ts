import { createPublicKey } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { HOME_FILES, SqliteStore, writeSecret } from "@kpip/kernel";
import { generateIdentity, isPersonaId, parseIdentity, rawPublicKey, serializeIdentity } from "@kpip/protocol";
import type { Command } from "../command.js";
import { EXIT, resolveHome, UsageError } from "../util.js";

function openStore(home: string): SqliteStore {
  const path = join(home, HOME_FILES.database);
  if (!existsSync(path))
    throw new UsageError(
      `no kernel home at ${home} (no ${HOME_FILES.database}) — start a kernel once with \`npm start\` or pass --home`,
    );
  return new SqliteStore(path);
}

/** Reads a public key from an identity file, a PEM SPKI file, or a base64url text of 32 bytes. */
function readPublicKey(file: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(file, "utf8").trim();
  } catch (e) {
    throw new UsageError(`cannot read --public-key file: ${(e as Error).message}`);
  }
  if (text.startsWith("{")) {
    const doc = JSON.parse(text) as { publicKey?: string; privateKey?: string };
    if (doc.privateKey !== undefined) return parseIdentity(text).publicKey;
    if (typeof doc.publicKey === "string") text = doc.publicKey;
  }
  if (text.startsWith("-----BEGIN PUBLIC KEY-----")) {
    const key = createPublicKey(text);
    if (key.asymmetricKeyType !== "ed25519") throw new UsageError("the public key must be Ed25519");
    return rawPublicKey(key);
  }
  const raw = Buffer.from(text, "base64url");
  if (raw.length !== 32)
    throw new UsageError("the public key must be 32 bytes of base64url, a PEM SPKI key, or an identity file");
  return raw;
}

const home = { type: "string" as const, description: "kernel home (default $KPIP_HOME or the XDG state dir)" };
const json = { type: "boolean" as const, description: "print JSON" };

export const personaCommand: Command = {
  name: "persona",
  summary: "manage the persona registry: create, add, list, remove",
  usage: "kpip persona create <id> [--out F] | add <id> --public-key F | list | remove <id>  [--home DIR] [--json]",
  example: "kpip persona create alice --json",
  options: {
    home,
    json,
    out: { type: "string", description: "create: where to write the identity file (default <home>/personas/<id>.identity)" },
    "public-key": { type: "string", description: "add: file holding the persona's Ed25519 public key" },
  },
  async run(v, pos) {
    const [sub, id, ...extra] = pos;
    if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
    const h = resolveHome(v.home as string | undefined);
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
        const store = openStore(h);
        try {
          if (store.getPersona(pid)) {
            process.stderr.write(`kpip persona: ${pid} is already registered\n`);
            return EXIT.FAILED;
          }
          const file = resolve((v.out as string | undefined) ?? join(h, "personas", `${pid.replaceAll("/", "__")}.identity`));
          mkdirSync(join(file, ".."), { recursive: true, mode: 0o700 });
          const identity = generateIdentity(pid);
          try {
            writeSecret(file, serializeIdentity(identity));
          } catch (e) {
            throw new UsageError(`cannot write ${file}: ${(e as Error).message}`);
          }
          store.addPersona(pid, identity.publicKey);
          const publicKey = Buffer.from(identity.publicKey).toString("base64url");
          if (asJson) process.stdout.write(`${JSON.stringify({ persona: pid, identity: file, publicKey })}\n`);
          else
            process.stdout.write(
              `created persona ${pid}\n  identity file: ${file} (keep it secret: mode 0600)\n  public key:    ${publicKey}\n`,
            );
          return EXIT.OK;
        } finally {
          store.close();
        }
      }
      case "add": {
        const pid = needId();
        if (v["public-key"] === undefined) throw new UsageError("persona add needs --public-key <file>");
        const key = readPublicKey(v["public-key"] as string);
        const store = openStore(h);
        try {
          if (store.getPersona(pid)) {
            process.stderr.write(`kpip persona: ${pid} is already registered\n`);
            return EXIT.FAILED;
          }
          store.addPersona(pid, key);
          if (asJson)
            process.stdout.write(`${JSON.stringify({ persona: pid, publicKey: Buffer.from(key).toString("base64url") })}\n`);
          else process.stdout.write(`registered persona ${pid}\n`);
          return EXIT.OK;
        } finally {
          store.close();
        }
      }
      case "list": {
        if (id) throw new UsageError("persona list takes no id");
        const store = openStore(h);
        try {
          const rows = store.listPersonas().map((p) => ({
            persona: p.id,
            publicKey: Buffer.from(p.publicKey).toString("base64url"),
            created: new Date(p.createdAt).toISOString(),
          }));
          if (asJson) process.stdout.write(`${JSON.stringify(rows)}\n`);
          else for (const r of rows) process.stdout.write(`${r.persona.padEnd(24)} ${r.publicKey}  ${r.created}\n`);
          return EXIT.OK;
        } finally {
          store.close();
        }
      }
      case "remove": {
        const pid = needId();
        const store = openStore(h);
        try {
          if (!store.removePersona(pid)) {
            process.stderr.write(`kpip persona: ${pid} is not registered\n`);
            return EXIT.FAILED;
          }
          if (asJson) process.stdout.write(`${JSON.stringify({ removed: pid })}\n`);
          else process.stdout.write(`removed persona ${pid} (its open sessions end at their next attestation)\n`);
          return EXIT.OK;
        } finally {
          store.close();
        }
      }
      default:
        throw new UsageError(
          sub ? `unknown persona command ${JSON.stringify(sub)}` : "missing persona command: create, add, list or remove",
        );
    }
  },
};
