import { existsSync } from "node:fs";
import { join } from "node:path";
import type { KernelClient, TokenEntry } from "@kpip/client";
import { HOME_FILES, RootKeys, SqliteStore } from "@kpip/kernel";
import {
  type ArgsOf,
  attenuate,
  type Caveat,
  type CborMap,
  type decodeToken,
  derivedTokenId,
  isWorkspaceId,
  type ResultOf,
  type Right,
  systemDescribe,
  tokenFromString,
  tokenInspect,
  tokenMint,
  tokenToString,
} from "@kpip/protocol";
import { printable } from "../audit/printable.js";
import type { Command, Values } from "../command.js";
import { CONNECT_OPTIONS, readTokenArg, withClient, writeTokenFile } from "../connect.js";
import { checkHomeToWrite } from "../home-check.js";
import { didYouMean, subcommandError } from "../suggest.js";
import { EXIT, isoTime, printTable, resolveHome, toJson, UsageError } from "../util.js";
import { actor } from "./actor.js";
import { parseAllow, parseDuration, parseLimits } from "./grant-args.js";

function workspaces(v: Values): string[] | undefined {
  const w = v.workspace as string[] | undefined;
  if (!w?.length) return undefined;
  for (const x of w) if (!isWorkspaceId(x)) throw new UsageError(`invalid workspace ${JSON.stringify(x)}`);
  return w;
}

export const tokenCommand: Command = {
  name: "token",
  summary: "mint, attenuate, inspect, revoke and list capability tokens; rotate root keys",
  usage:
    "kpip token mint --persona P --allow OPS:TARGETS [--limit k=v] --ttl D [--max-lifetime D] [--out F] | attenuate @FILE|- [--allow …] [--ttl D] [--persona SUB] [--out F] | inspect @FILE|- | revoke <id> | list [--persona P] | rotate-key | retire-key <kid>",
  example:
    "kpip token mint --persona alice --allow 'storage.read,storage.write:obj://ws1/**' --limit storage.bytes=10MB --ttl 1h --max-lifetime 24h",
  options: {
    ...CONNECT_OPTIONS,
    persona: { type: "string", description: "mint: the token's subject; attenuate: narrow to this sub-persona; list: filter" },
    allow: { type: "string", multiple: true, description: "OPS:TARGETS, comma-separated patterns; repeatable" },
    limit: { type: "string", multiple: true, description: "name=value (units KB MB GB KiB MiB GiB); repeatable" },
    ttl: { type: "string", description: "lifetime: 30s, 10m, 1h, 7d" },
    "max-lifetime": { type: "string", description: "mint: how far refresh may extend the token" },
    workspace: { type: "string", multiple: true, description: "restrict to this workspace; repeatable" },
    out: {
      type: "string",
      description: "mint, attenuate: write the token to this new file (0600) instead of standard output",
    },
    json: { type: "boolean", description: "print JSON" },
  },
  async run(v, pos) {
    const [sub, arg, ...extra] = pos;
    if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
    const json = v.json === true;
    const out = (o: Record<string, unknown>, human: string) =>
      process.stdout.write(json ? `${JSON.stringify(o)}\n` : `${human}\n`);
    switch (sub) {
      case "mint": {
        const persona = v.persona as string | undefined;
        if (!persona) throw new UsageError("token mint needs --persona");
        const allows = (v.allow as string[] | undefined) ?? [];
        if (!allows.length) throw new UsageError("token mint needs at least one --allow OPS:TARGETS");
        if (v.ttl === undefined) throw new UsageError("token mint needs --ttl");
        const args: ArgsOf<typeof tokenMint> = {
          rights: allows.map(parseAllow),
          ttlMs: parseDuration(v.ttl as string, "--ttl"),
        };
        const limits = parseLimits(v.limit as string[] | undefined);
        if (limits) args.limits = limits;
        if (v["max-lifetime"] !== undefined) {
          args.maxLifetimeMs = parseDuration(v["max-lifetime"] as string, "--max-lifetime");
          if (args.maxLifetimeMs < args.ttlMs)
            throw new UsageError(
              `--max-lifetime (${v["max-lifetime"]}) is shorter than --ttl (${v.ttl}): refresh could never extend it`,
            );
        }
        const ws = workspaces(v);
        if (ws) args.workspaces = ws;
        // Refused before minting: a token nobody can read back would be minted for nothing.
        if (typeof v.out === "string" && existsSync(v.out)) throw new UsageError(`${v.out} exists; --out writes a new file`);
        return withClient(v, async (c) => {
          await refuseUnknownOps(c, args.rights);
          const p = (await c.op(tokenMint, `persona://${persona}`, args)).payload;
          const text = Buffer.from(p.token).toString("base64url");
          if (typeof v.out === "string") {
            writeTokenFile(v.out, text);
            out({ file: v.out, id: p.id, persona, exp: isoTime(p.exp) }, `token ${p.id} written to ${v.out}`);
          } else out({ token: text, id: p.id, persona, exp: isoTime(p.exp) }, text);
        });
      }
      case "attenuate": {
        if (!arg) throw new UsageError("token attenuate needs the token (@FILE or - for standard input)");
        let t: ReturnType<typeof decodeToken>;
        try {
          t = tokenFromString(readTokenArg(arg));
        } catch (e) {
          if (e instanceof UsageError) throw e;
          throw new UsageError(`not a token: ${(e as Error).message}`);
        }
        const caveats: Caveat[] = [];
        const rights = ((v.allow as string[] | undefined) ?? []).map(parseAllow);
        // One rights caveat of (op, target) pairs: --allow A:X --allow B:Y allows A on X and B on Y, never A on Y.
        if (rights.length) {
          const pairs = rights.flatMap((r) => r.ops.flatMap((o) => r.targets.map((x): [string, string] => [o, x])));
          if (pairs.length > 64)
            throw new UsageError(`--allow lists ${pairs.length} (op, target) pairs; a token caveat holds at most 64`);
          caveats.push({ t: "rights", v: pairs });
        }
        if (v.ttl !== undefined) caveats.push({ t: "exp", v: Date.now() + parseDuration(v.ttl as string, "--ttl") });
        if (v.persona !== undefined) caveats.push({ t: "sub", v: v.persona as string });
        const limits = parseLimits(v.limit as string[] | undefined);
        if (limits) caveats.push({ t: "limits", v: limits });
        const ws = workspaces(v);
        if (ws) caveats.push({ t: "workspaces", v: ws });
        if (!caveats.length)
          throw new UsageError("token attenuate needs at least one of --allow, --ttl, --persona, --limit, --workspace");
        try {
          for (const c of caveats) t = attenuate(t, c);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        const text = tokenToString(t);
        if (typeof v.out === "string") {
          writeTokenFile(v.out, text);
          out(
            { file: v.out, id: derivedTokenId(t), parent: t.claims.id, caveats: t.caveats },
            `token ${derivedTokenId(t)} (from ${t.claims.id}) written to ${v.out}`,
          );
        } else out({ token: text, id: derivedTokenId(t), parent: t.claims.id, caveats: t.caveats }, text);
        return EXIT.OK;
      }
      case "inspect": {
        if (!arg) throw new UsageError("token inspect needs the token (@FILE or - for standard input)");
        const text = readTokenArg(arg);
        let token: ReturnType<typeof decodeToken>;
        try {
          token = tokenFromString(text);
        } catch (e) {
          throw new UsageError(`not a token: ${(e as Error).message}`);
        }
        return withClient(v, async (c) => {
          const r = await c.op(tokenInspect, `token://${token.claims.id}`, { token: Buffer.from(text, "base64url") });
          if (json) process.stdout.write(`${JSON.stringify(toJson(r.payload))}\n`);
          else process.stdout.write(describeInspection(r.payload));
        });
      }
      case "revoke": {
        if (!arg || !/^[0-9a-f]{32}$/.test(arg))
          throw new UsageError("token revoke needs a token id (32 hex characters; see token list)");
        return withClient(v, async (c) => {
          await c.call("token.revoke", `token://${arg}`);
          out({ revoked: arg }, `revoked ${arg} and every token derived from it`);
        });
      }
      case "list": {
        if (arg) throw new UsageError("token list takes no argument (use --persona to filter)");
        return withClient(v, async (c) => {
          // Paged: the kernel answers PARTIAL pages; the whole list is never one message.
          const rows: TokenEntry[] = [];
          for await (const t of c.tokens.list(v.persona ? { persona: v.persona as string } : {})) rows.push(t);
          if (json) process.stdout.write(`${JSON.stringify(toJson(rows as unknown as CborMap[]))}\n`);
          else
            printTable(
              ["ID", "SUBJECT", "STATE", "EXPIRES (UTC)", "MINTED BY"],
              rows.map((t) => [
                t.id,
                String(t.sub),
                t.revokedAt ? "revoked" : (t.exp as number) <= Date.now() ? "expired" : "valid",
                isoTime(t.exp),
                String(t.mintedBy),
              ]),
            );
        });
      }
      case "rotate-key": {
        const home = existingHome(v.home as string | undefined);
        let kid: string;
        try {
          kid = RootKeys.rotate(home);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        journalKeyChange(home, "token.rotate-key", `root key ${kid} made current`);
        out({ kid }, `new root key ${kid}: new tokens use it; older tokens verify until they expire or their key is retired`);
        return EXIT.OK;
      }
      case "retire-key": {
        if (!arg) throw new UsageError("token retire-key needs a key id");
        try {
          RootKeys.retire(existingHome(v.home as string | undefined), arg);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        journalKeyChange(existingHome(v.home as string | undefined), "token.retire-key", `root key ${arg} retired`);
        out({ retired: arg }, `retired root key ${arg}: tokens signed with it no longer verify`);
        return EXIT.OK;
      }
      default:
        throw subcommandError("token", sub, ["mint", "attenuate", "inspect", "revoke", "list", "rotate-key", "retire-key"]);
    }
  },
};

/** The home the key commands change: not a home (a typo, a missing directory) is said so, rather than a key file made there. */
function existingHome(given: string | undefined): string {
  const home = resolveHome(given);
  if (!existsSync(join(home, HOME_FILES.database)))
    throw new UsageError(`no kernel home at ${home} (no ${HOME_FILES.database}) — pass --home`);
  checkHomeToWrite(home);
  return home;
}

/** A literal op in --allow that the kernel does not have is a typo, not a grant: refuse it with the nearest names. */
async function refuseUnknownOps(c: KernelClient, rights: readonly Right[]): Promise<void> {
  const literal = rights.flatMap((r) => r.ops).filter((o) => !o.includes("*"));
  if (literal.length === 0) return;
  let known: string[];
  try {
    known = (await c.op(systemDescribe, "kernel://", {})).payload.ops.map((o) => o.op);
  } catch {
    return; // a token without system.describe: the kernel itself is the judge
  }
  for (const o of literal)
    if (!known.includes(o)) throw new UsageError(`--allow names an op the kernel does not have: ${o}${didYouMean(o, known)}`);
}

type Inspection = ResultOf<typeof tokenInspect>;

/** `token inspect` for people: one verdict first, then what the token allows after its caveats. */
function describeInspection(i: Inspection): string {
  const e = i.effective;
  // The token's own state first; whether the persona asking could present it (`problem`) apart.
  // A forged token's claims are its maker's: "invalid" says so before any of them is shown.
  const why =
    i.status === "invalid"
      ? `invalid: ${i.problem ?? "its signature does not verify"}; what follows is only what it claims`
      : i.status !== "valid"
        ? i.status
        : !e.usable
          ? "its caveats leave nothing allowed"
          : undefined;
  const lines = [
    `token      ${i.id}${i.claims.kid ? ` (root key ${i.claims.kid})` : ""}`,
    `usable     ${why ? `NO — ${why}` : `yes, by ${e.subject}`}`,
    ...(i.problem && !why ? [`by you     no — ${i.problem}`] : []),
    `subject    ${e.subject}${e.subject !== i.claims.sub ? ` (narrowed from ${i.claims.sub})` : ""}`,
    ...e.rights.map((r, n) => `${n === 0 ? "allows    " : "          "} ${r.ops.join(", ")} on ${r.targets.join(", ")}`),
    ...(e.pairFilters ?? []).map((f) => `  and only pairs    ${f.map((r) => `${r.ops[0]} on ${r.targets[0]}`).join(", ")}`),
    ...e.opFilters.map((f) => `  and only ops      ${f.join(", ")}`),
    ...e.targetFilters.map((f) => `  and only targets  ${f.join(", ")}`),
  ];
  const limits = Object.entries(e.limits);
  if (limits.length) lines.push(`limits     ${limits.map(([k, v]) => `${k}=${v}`).join(", ")}`);
  if (e.workspaces) lines.push(`workspaces ${e.workspaces.join(", ")}`);
  if (e.domains) lines.push(`domains    ${e.domains.join(", ")}`);
  lines.push(`expires    ${isoTime(e.exp)} (refreshable until ${isoTime(e.maxExp)})`);
  lines.push(`caveats    ${i.caveats.length}`);
  // Each line escaped whole, newlines included: a caveat's text is the holder's (anyone holding
  // a token may append one offline, and a domain may be any text), so it must not forge a line.
  return `${lines.map((l) => printable(l)).join("\n")}\n`;
}

/**
 * A root key change is made on the key file, beside any kernel: the kernel records that the file
 * changed (`token.keys`, or its next `kernel.start`), not who changed it. The offline journal
 * says who (uid and user), and a kernel moves it into the audit chain within a tick or at its
 * next start. The key file is changed already: a journal that cannot be written is a warning.
 */
function journalKeyChange(home: string, op: string, message: string): void {
  const path = join(home, HOME_FILES.database);
  if (!existsSync(path)) return;
  try {
    const store = new SqliteStore(path);
    try {
      store.withJournal({ actor: actor("kpip token"), op, target: "kernel://", message }, () => true);
    } finally {
      store.close();
    }
  } catch (e) {
    process.stderr.write(`warning: the change is made but not journalled for the audit record: ${(e as Error).message}\n`);
  }
}
