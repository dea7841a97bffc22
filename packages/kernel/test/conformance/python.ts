import { join } from "node:path";
import { findPython, runProcess } from "@kpip/protocol/testing";
import { REPO_ROOT, sandboxSkip, type TestKernel } from "../harness.js";
import { CONFORMANCE_LIMITS } from "./transports.js";

/**
 * The conformance features with the Python client (python/, package `kpip`) as the client:
 * python/tests/conformance.py has one unittest suite per README column and one test per
 * feature row; all of them run in one Python process against one kernel, and each outcome
 * comes back as a `KPIP-CONFORMANCE {json}` line. The README's Python columns are checked
 * against these outcomes (conformance.test.ts), so a mark there means the feature ran.
 */
export const PYTHON_COLUMNS = [
  { name: "Python, Unix socket", suite: "UnixSocket" },
  { name: "Python, Unix socket + shm", suite: "UnixSocketShm" },
] as const;

export interface PythonOutcome {
  suite: string;
  feature: string;
  /** The suite's namespace: its objects are obj://<ns>/…, its personas <name>-<ns>. */
  ns: string;
  outcome: "ok" | "failed" | "skipped";
  detail: string;
}

export interface PythonRun {
  outcomes: PythonOutcome[];
  code: number | null;
  stderr: string;
}

/** The Python client's interpreter (`findPython()`); without one the Python columns are not run. */
export const python = findPython();

const PYTHON_DIR = join(REPO_ROOT, "python");
const MARK = "KPIP-CONFORMANCE ";

/** Runs python/tests/conformance.py against `t` (a conformance kernel); never hangs past 5 minutes. */
export async function runPythonConformance(t: TestKernel): Promise<PythonRun> {
  const r = await runProcess(python.path as string, ["-m", "tests.conformance"], {
    cwd: PYTHON_DIR,
    env: {
      ...process.env,
      KPIP_SOCKET: t.k.socketPath,
      KPIP_IDENTITY: t.k.adminIdentity,
      KPIP_TOKEN: t.k.adminToken,
      KPIP_CONFORMANCE_MAX_BODY: String(CONFORMANCE_LIMITS.maxBodyBytes),
      KPIP_CONFORMANCE_LARGE: String(CONFORMANCE_LIMITS.largePayload),
      KPIP_CONFORMANCE_NO_SANDBOX: sandboxSkip || "",
    },
  });
  const outcomes = r.out
    .split("\n")
    .filter((l) => l.startsWith(MARK))
    .map((l) => JSON.parse(l.slice(MARK.length)) as PythonOutcome);
  return { outcomes, code: r.code, stderr: r.err };
}

/**
 * The README mark a feature earns in a Python column: ✓ when it ran and passed, or was not
 * run only for want of the process sandbox (as for the TypeScript columns, whose agent row
 * is skipped without one and required in CI); ✗ when it failed; — when it never ran.
 */
export function pythonMark(o: PythonOutcome | undefined): string {
  if (!o) return "—";
  if (o.outcome === "ok" || (o.outcome === "skipped" && sandboxSkip && o.detail === sandboxSkip)) return "✓";
  return o.outcome === "failed" ? "✗" : "—";
}
