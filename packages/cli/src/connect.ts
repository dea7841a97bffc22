import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type ConnectOptions, KernelClient, loadIdentity } from "@kpip/client";
import type { OptionSpec, Values } from "./command.js";
import { defaultSocket, resolveHome, UsageError } from "./util.js";

/** The options every command that talks to a kernel shares. */
export const CONNECT_OPTIONS: Record<string, OptionSpec> = {
  home: { type: "string", description: "kernel home (default $KPIP_HOME or the XDG state dir)" },
  socket: { type: "string", description: "kernel socket (default <home>/kernel.sock)" },
  identity: { type: "string", description: "persona identity file (default <home>/admin.identity)" },
  token: {
    type: "string",
    multiple: true,
    description: "token to bind (text or @file); repeatable (default with the admin identity: <home>/admin.token)",
  },
};

/** --token values: token text, or @path of a file holding it; the admin token by default for the admin identity. */
export function readTokens(values: string[] | undefined, defaultFile: string | undefined): string[] {
  if (values?.length) return values.map(readTokenArg);
  if (defaultFile && existsSync(defaultFile)) return [readTokenArg(`@${defaultFile}`)];
  return [];
}

/** A token given on the command line: its text, or @path of a file holding it. */
export function readTokenArg(t: string): string {
  if (!t.startsWith("@")) return t.trim();
  try {
    return readFileSync(t.slice(1), "utf8").trim();
  } catch (e) {
    throw new UsageError(`cannot read token file ${t.slice(1)}: ${(e as Error).message}`);
  }
}

/** Connects as the persona the flags name (the admin by default) with its tokens bound. */
export async function connectFromFlags(v: Values, extra: Partial<ConnectOptions> = {}): Promise<KernelClient> {
  const home = resolveHome(v.home as string | undefined);
  const identity = (v.identity as string | undefined) ?? join(home, "admin.identity");
  if (!existsSync(identity)) throw new UsageError(`identity file ${identity} not found — pass --identity or --home`);
  let id: ReturnType<typeof loadIdentity>;
  try {
    id = loadIdentity(identity);
  } catch (e) {
    throw new UsageError(`${identity} is not a usable identity file: ${(e as Error).message}`);
  }
  const client = await KernelClient.connect({
    socket: (v.socket as string | undefined) ?? defaultSocket(home),
    identity: id,
    tokens: readTokens(v.token as string[] | undefined, v.identity === undefined ? join(home, "admin.token") : undefined),
    ...extra,
  });
  for (const r of client.refusedTokens) {
    process.stderr.write(`kpip: warning: token ${r.index + 1} was not bound: ${r.code}: ${r.message}\n`);
  }
  return client;
}
