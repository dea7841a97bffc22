import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { CborMap } from "@kpip/protocol";
import { ROOT_KEYS_FILE } from "../auth/keys.js";
import { ConfigError, type KernelConfig } from "../config.js";
import { HOME_FILES } from "../home.js";
import type { Logger } from "../log.js";
import { Sandbox } from "./sandbox.js";
import {
  checkScratchRootPlace,
  disownScratchRoot,
  fallbackScratchRoot,
  namedScratchRoot,
  ROOT_LIVE,
  ROOT_LOCK,
  removeStaleRoots,
  scratchRootTaken,
} from "./scratch-roots.js";
import type { SecretFile } from "./view.js";

/**
 * The files whose content no sandbox may see and which must therefore have no other name (a
 * hard link under a read path shows the same file, which no cover of a path hides): the
 * home's keys, tokens and database, the gRPC TLS key, the config file.
 */
export function sandboxSecrets(c: KernelConfig, configFile?: string): SecretFile[] {
  const home = (name: string, what: string) => ({ path: join(c.home, name), what });
  return [
    home(HOME_FILES.kernelKey, "kernel key"),
    home(ROOT_KEYS_FILE, "token root key file"),
    home(HOME_FILES.adminIdentity, "admin identity"),
    home(HOME_FILES.adminToken, "admin token"),
    home(HOME_FILES.database, "kernel database"),
    home(`${HOME_FILES.database}-wal`, "kernel database's WAL"),
    ...(c.grpcTlsKey ? [{ path: c.grpcTlsKey, what: "gRPC TLS key" }] : []),
    ...(configFile ? [{ path: configFile, what: "config file" }] : []),
  ];
}

/**
 * The kernel's process sandbox from its configuration, probed once with a real trial run.
 * Unusable: the kernel still starts, but agent.spawn and command compute are refused (fail
 * closed) with an error naming the fix. `--sandbox none` is said loudly.
 */
export function openSandbox(
  c: KernelConfig,
  log: Logger,
  program?: string,
  configFile?: string,
  remover?: (paths: string[]) => Promise<string | undefined>,
): Sandbox {
  const uid = process.getuid?.() ?? 0;
  const named = !c.sandboxScratch;
  const usual = join(tmpdir(), `kpip-scratch-${uid}-${createHash("sha256").update(resolve(c.home)).digest("hex").slice(0, 12)}`);
  let sandbox = sandboxAt(c.sandboxScratch || namedScratchRoot(usual), named, c, log, program, configFile, remover);
  // The usual name taken by another local user after namedScratchRoot looked (the trial run, or
  // the hold, found it theirs): the random name no one can take first, as if taken before the look.
  if (named && sandbox.config.scratchRoot === usual && scratchRootTaken(usual)) {
    void sandbox.close(false);
    sandbox = sandboxAt(fallbackScratchRoot(usual), named, c, log, program, configFile, remover);
  }
  const scratchRoot = sandbox.config.scratchRoot;
  // One kernel per home, and the scratch root is the home's: what is left there is a crashed run's
  // (removed in the background: however deep or large, it neither delays nor stops the start).
  void sandbox.sweep();
  // Roots of other homes' kernels that died without stopping (only those provably dead: scratch-roots.ts).
  if (named) {
    const stale = removeStaleRoots(tmpdir(), uid, scratchRoot, (paths) => sandbox.remove(paths));
    if (stale) log.info({ roots: stale }, "removed the scratch roots of kernels that ended without stopping");
  }
  if (sandbox.mode === "none")
    log.warn("--sandbox none: agents and commands run unconfined, as the kernel's own user, and can read its home");
  else if (sandbox.unavailable)
    log.error(
      { reason: sandbox.unavailable, scratch: scratchRoot },
      "no process sandbox: agent.spawn and command compute are refused",
    );
  else log.info({ scratch: scratchRoot }, "process sandbox: bubblewrap");
  for (const w of sandbox.mode === "bwrap" && !sandbox.unavailable ? sandbox.weakened : [])
    log.warn({ reason: w }, "process sandbox weakened");
  return sandbox;
}

/** The sandbox with `scratchRoot`, probed, and the root held when the kernel `named` it. */
function sandboxAt(
  scratchRoot: string,
  named: boolean,
  c: KernelConfig,
  log: Logger,
  program?: string,
  configFile?: string,
  remover?: (paths: string[]) => Promise<string | undefined>,
): Sandbox {
  if (`${resolve(scratchRoot)}/`.startsWith(`${resolve(c.home)}/`))
    throw new ConfigError(`sandboxScratch ${scratchRoot} must lie outside the kernel home`);
  checkScratchRootPlace(scratchRoot, !named);
  const sandbox = new Sandbox({
    mode: c.sandbox as "bwrap" | "none",
    readPaths: c.sandboxReadPaths.split(":").filter(Boolean),
    scratchRoot,
    uid: c.sandboxUid,
    // Every path the configuration names that holds a secret or the kernel's door, by real path (view.ts).
    hidden: [
      { path: c.home, what: "kernel home", tree: true },
      { path: scratchRoot, what: "scratch root", tree: true },
      { path: c.socket, what: "socket", tree: false },
      ...(c.auditAnchorFile ? [{ path: c.auditAnchorFile, what: "audit anchor file", tree: false }] : []),
      ...(c.grpcTlsKey ? [{ path: c.grpcTlsKey, what: "gRPC TLS key", tree: false }] : []),
      ...(configFile ? [{ path: configFile, what: "config file", tree: false }] : []),
    ],
    secrets: sandboxSecrets(c, configFile),
    limits: {
      processes: c.sandboxProcesses,
      memoryBytes: c.sandboxMemoryBytes,
      cpuSeconds: c.sandboxCpuSeconds,
      fileBytes: c.sandboxFileBytes,
      openFiles: c.sandboxFiles,
    },
    tmpBytes: c.sandboxTmpBytes,
    nice: c.sandboxNice,
    oomScoreAdj: c.sandboxOomScoreAdj,
    ptys: c.sandboxPtys === 1,
    removalFailed: (paths, why) =>
      log.error({ paths, err: why }, "cannot remove scratch directories: left on disk, tried again at the next start"),
    ...(program ? { program } : {}),
    ...(remover ? { remover } : {}),
    lockRoot: named ? (c.sandbox === "bwrap" ? ROOT_LOCK : ROOT_LIVE) : undefined,
  });
  // A root whose processes may outlive its kernel must carry no free `.lock`, or another kernel would remove it whole.
  if (named && c.sandbox !== "bwrap") disownScratchRoot(scratchRoot);
  // Held from now (or from the trial run) to the stop: its name is not free for anyone to take meanwhile.
  if (named && (sandbox.mode === "none" || !sandbox.unavailable)) {
    try {
      sandbox.holdRoot();
    } catch (e) {
      // Taken between the look and now: every launch is refused the same way (launch() checks again).
      log.error({ err: (e as Error).message }, "cannot hold the scratch root");
    }
  }
  return sandbox;
}

/** The audit record's message for the sandbox the kernel started with. */
export function sandboxSummary(s: Sandbox): string {
  if (s.mode === "none") return "sandbox none: agents and commands run unconfined (operator's explicit choice)";
  return s.unavailable ? `sandbox bwrap unavailable (${s.unavailable}): agents and commands refused` : "sandbox bwrap";
}

/** What system.info and system.status say about the sandbox. */
export function sandboxInfo(s: Sandbox | undefined): CborMap {
  return {
    mode: s?.mode ?? "none",
    usable: s ? s.mode === "none" || !s.unavailable : false,
    // As personas may read it (system.info): the log and the kernel.start record have it whole.
    ...(s?.unavailableToPersonas ? { reason: s.unavailableToPersonas } : {}),
    ...(s?.mode === "bwrap" && !s.unavailable && s.weakened.length ? { weakened: s.weakened.join("; ") } : {}),
  };
}
