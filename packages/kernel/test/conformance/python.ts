import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
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

/**
 * Python ≥ 3.11 with `cryptography`: $KPIP_PYTHON, else the first of python3 and
 * /usr/bin/python3 that imports it (as packages/client/test/python-client.test.ts finds it).
 * Without one, the Python columns are not run; under CI=true or KPIP_REQUIRE_PYTHON=1 that fails.
 */
export const python = ((): { path?: string; why: string; required: boolean } => {
  const required = process.env.CI === "true" || process.env.KPIP_REQUIRE_PYTHON === "1";
  const candidates = process.env.KPIP_PYTHON ? [process.env.KPIP_PYTHON] : ["python3", "/usr/bin/python3"];
  for (const py of candidates) {
    const r = spawnSync(py, ["-c", "import sys, cryptography; assert sys.version_info >= (3, 11)"], { encoding: "utf8" });
    if (r.status === 0) return { path: py, why: "", required };
  }
  const why = `no Python >= 3.11 with cryptography (tried ${candidates.join(", ")}); install python3 python3-cryptography`;
  return { why, required };
})();

const PYTHON_DIR = join(REPO_ROOT, "python");
const MARK = "KPIP-CONFORMANCE ";

/** Runs python/tests/conformance.py against `t` (a conformance kernel); never hangs past 5 minutes. */
export function runPythonConformance(t: TestKernel): Promise<PythonRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(python.path as string, ["-m", "tests.conformance"], {
      cwd: PYTHON_DIR,
      env: {
        ...process.env,
        PYTHONDONTWRITEBYTECODE: "1",
        KPIP_SOCKET: t.k.socketPath,
        KPIP_IDENTITY: t.k.adminIdentity,
        KPIP_TOKEN: t.k.adminToken,
        KPIP_CONFORMANCE_MAX_BODY: String(CONFORMANCE_LIMITS.maxBodyBytes),
        KPIP_CONFORMANCE_LARGE: String(CONFORMANCE_LIMITS.largePayload),
        KPIP_CONFORMANCE_NO_SANDBOX: sandboxSkip || "",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      const outcomes = out
        .split("\n")
        .filter((l) => l.startsWith(MARK))
        .map((l) => JSON.parse(l.slice(MARK.length)) as PythonOutcome);
      resolve({ outcomes, code: signal ? -1 : code, stderr: signal ? `${stderr}\n[killed: ${signal}]` : stderr });
    });
  });
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
