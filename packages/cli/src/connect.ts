import { closeSync, constants, existsSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { type ConnectOptions, KernelClient, KernelUnavailableError, loadIdentity, TimeoutError } from "@kpip/client";
import { tokenFromString } from "@kpip/protocol";
import { readAtMost, readRegularFile, UnreadableFileError } from "@kpip/protocol/regular-file";
import { printable } from "./audit/printable.js";
import type { OptionSpec, Values } from "./command.js";
import { defaultSocket, EXIT, reportError, resolveHome, UsageError } from "./util.js";

/** The options every command that talks to a kernel shares. */
export const CONNECT_OPTIONS: Record<string, OptionSpec> = {
  home: { type: "string", description: "kernel home (default $KPIP_HOME or the XDG state dir)" },
  socket: { type: "string", description: "kernel socket (default <home>/kernel.sock)" },
  identity: { type: "string", description: "persona identity file (default <home>/admin.identity)" },
  token: {
    type: "string",
    multiple: true,
    description:
      "token to bind: @FILE (a file holding it) or - (standard input); repeatable. Without it: $KPIP_TOKEN (the token or @FILE), else with the admin identity <home>/admin.token. Raw token text works but is visible to every local user",
  },
};

/** The environment variable a token can be passed in (never on the command line, where `ps` shows it). */
export const TOKEN_ENV = "KPIP_TOKEN";

/**
 * --token values (each @FILE, - or raw text); without any, $KPIP_TOKEN (token text, several
 * separated by whitespace, or @FILE), else the admin token file for the admin identity.
 */
export function readTokens(
  values: string[] | undefined,
  defaultFile: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): string[] {
  if (values?.length) return values.map(readTokenArg);
  const fromEnv = env[TOKEN_ENV]?.trim();
  // The environment is the process's own (/proc/<pid>/environ is 0400): token text is safe there.
  if (fromEnv) return fromEnv.startsWith("@") ? [readTokenArg(fromEnv)] : fromEnv.split(/\s+/);
  if (defaultFile && existsSync(defaultFile)) return [readTokenArg(`@${defaultFile}`)];
  return [];
}

let stdinRead = false;

/**
 * Larger than any token a kernel takes (maxTokenBytes, 8 KiB by default) and than a bearer
 * secret: a bound, so that a token file a persona handed over cannot be /dev/zero.
 */
export const TOKEN_FILE_MAX_BYTES = 1024 * 1024;

/**
 * A token argument: @path of a file holding it, `-` for standard input, or the token text itself.
 * Token text on the command line is readable by every local user (/proc/<pid>/cmdline, ps)
 * and echoed by `npm run`: it works, with a warning naming the safe ways.
 */
export function readTokenArg(t: string): string {
  if (t === "-") {
    if (stdinRead) throw new UsageError("standard input can give only one token (--token - once)");
    stdinRead = true;
    try {
      return readAtMost(0, TOKEN_FILE_MAX_BYTES, "standard input").toString("utf8").trim();
    } catch (e) {
      throw new UsageError(`cannot read a token from standard input: ${(e as Error).message}`);
    }
  }
  if (!t.startsWith("@")) {
    process.stderr.write(
      `kpip: warning: a token on the command line is readable by every local user (ps, /proc/<pid>/cmdline); pass @FILE, - (standard input) or set ${TOKEN_ENV}\n`,
    );
    return t.trim();
  }
  // A regular file only, of a bounded size: a FIFO would block for ever, /dev/zero fill memory
  // (pipe a token through standard input, `-`, instead).
  try {
    return readRegularFile(t.slice(1), TOKEN_FILE_MAX_BYTES).toString("utf8").trim();
  } catch (e) {
    if (e instanceof UnreadableFileError)
      throw new UsageError(`token file ${e.message}${e.code === "not-regular" ? " (for a pipe use -)" : ""}`);
    throw new UsageError(`cannot read token file ${t.slice(1)}: ${(e as Error).message}`);
  }
}

/** Writes a token to a new file, 0600 (never over an existing file nor through a link). */
export function writeTokenFile(path: string, text: string): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    throw new UsageError(`cannot create token file ${path}: ${(e as Error).message}`);
  }
  try {
    writeSync(fd, `${text}\n`);
  } finally {
    closeSync(fd);
  }
}

/**
 * Connects as the persona the flags name (the admin by default) with its tokens bound. Shared
 * memory is off unless asked for (`extra.shm`): a one-shot command that sends a few hundred bytes
 * would only pay for setting the segments up.
 */
export async function connectFromFlags(v: Values, extra: Partial<ConnectOptions> = {}): Promise<KernelClient> {
  const home = resolveHome(v.home as string | undefined);
  for (const flag of ["socket", "identity"] as const) if (v[flag] === "") throw new UsageError(`--${flag} must not be empty`);
  const identity = (v.identity as string | undefined) ?? join(home, "admin.identity");
  if (v.identity === undefined && !existsSync(home))
    // No kernel ever ran on this home: that is what the user needs to hear, not "no identity file".
    throw new KernelUnavailableError(`no kernel home at ${home} (no kernel has run there)`);
  if (!existsSync(identity)) throw new UsageError(`identity file ${identity} not found — pass --identity or --home`);
  let id: ReturnType<typeof loadIdentity>;
  try {
    id = loadIdentity(identity);
  } catch (e) {
    throw new UsageError(`${identity} is not a usable identity file: ${(e as Error).message}`);
  }
  const tokens = readTokens(v.token as string[] | undefined, v.identity === undefined ? join(home, "admin.token") : undefined);
  // A file or variable that holds no token is the command line's mistake (exit 2), not a kernel's FAILURE.
  for (const [i, t] of tokens.entries()) {
    try {
      tokenFromString(t);
    } catch (e) {
      throw new UsageError(`token ${i + 1} is not a token: ${(e as Error).message}`);
    }
  }
  const socket = (v.socket as string | undefined) ?? defaultSocket(home);
  let client: KernelClient;
  try {
    client = await KernelClient.connect({ socket, identity: id, tokens, shm: false, ...extra });
  } catch (e) {
    // A listener that takes the connection and never completes the handshake (a hung or fake
    // kernel) is no kernel to use: exit 3 as for none at all, so a script can tell it from a refusal.
    if (e instanceof TimeoutError)
      throw new KernelUnavailableError(`no kernel answered at ${socket}: ${e.message}`, { cause: e });
    throw e;
  }
  for (const r of client.refusedTokens) {
    process.stderr.write(`kpip: warning: token ${r.index + 1} was not bound: ${printable(`${r.code}: ${r.message}`)}\n`);
  }
  return client;
}

/** Runs `f` on a client connected from the flags, closed afterwards; an error is reported (as JSON with --json) and becomes the exit code. */
export async function withClient(v: Values, f: (c: KernelClient) => Promise<unknown>): Promise<number> {
  let client: KernelClient | undefined;
  try {
    client = await connectFromFlags(v);
    await f(client);
    return EXIT.OK;
  } catch (e) {
    return reportError(e, v.json === true);
  } finally {
    await client?.close().catch(() => {});
  }
}
