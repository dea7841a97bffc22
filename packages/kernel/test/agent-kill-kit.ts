import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import type { Identity } from "@kpip/protocol";
import { type TestKernel, until } from "./harness.js";

/** The fixture agent that runs the calls it is given and prints what each answered (test/fixtures/tree-agent.mjs). */
export const TREE_AGENT = fileURLToPath(new URL("../../test/fixtures/tree-agent.mjs", import.meta.url));

/**
 * A process slow to die (a sandbox's teardown, a process in uninterruptible sleep, which SIGKILL
 * reaches only when it leaves it): from `hold()` on, the SIGKILLs this process sends are held
 * (`held` counts them) until `release()` lets them through and puts `process.kill` back. Call
 * `release()` in the test's `finally` too, whether or not it held anything.
 */
export function sigkillHolder(): { held: (() => void)[]; hold(): void; release(): void } {
  const kill = process.kill;
  const held: (() => void)[] = [];
  return {
    held,
    hold: () => {
      process.kill = ((pid: number, sig?: string | number) => {
        if (sig !== "SIGKILL") return kill.call(process, pid, sig);
        held.push(() => {
          try {
            kill.call(process, pid, sig);
          } catch {
            // already gone
          }
        });
        return true;
      }) as typeof process.kill;
    },
    release: () => {
      process.kill = kill;
      for (const h of held.splice(0)) h();
    },
  };
}

/** The rights of {@link allocatingAgent}'s persona ann that its agent inherits: its own allocations. */
export const ALLOC = { ops: ["resource.alloc", "resource.query", "resource.free"], targets: ["persona://ann/**"] };

/**
 * ann (an allowance of 2 GPUs) and her agent `name`, which takes her whole allowance and keeps the
 * allocation's id to itself; resolves once the agent has printed its report (its stdout, given).
 */
export async function allocatingAgent(
  t: TestKernel,
  name: string,
): Promise<{
  ann: { identity: Identity; token: Uint8Array };
  c: KernelClient;
  a: Awaited<ReturnType<KernelClient["agents"]["spawn"]>>;
  agent: string;
  report: string;
  usage(): Promise<object>;
}> {
  const ann = await t.persona("ann", [ALLOC, { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] }], {
    limits: { gpu: 2 },
  });
  const c = await t.connect(ann.identity, [ann.token]);
  const usage = async () => ((await c.call("resource.query", "persona://ann")).payload as { usage: object }).usage;
  const steps = [{ call: "resource.alloc", target: `persona://ann/agent.${name}`, args: { resource: "gpu", amount: 2 } }];
  const a = await c.agents.spawn("node", name, {
    args: [TREE_AGENT, JSON.stringify(steps)],
    rights: [ALLOC],
    lifetimeMs: 120_000,
  });
  const agent = a.agent as string;
  const report = await until(
    async () => {
      const out = Buffer.from((await c.agents.logs(agent)).stdout).toString();
      return out.includes("\n") ? out : undefined;
    },
    60_000,
    "the agent's report",
  );
  return { ann, c, a, agent, report, usage };
}

/**
 * `spawner` (allowed agent.* and system.health), connected, and its agent `name` running `sleep
 * 600` with system.health; resolves once the kernel's clock has passed the spawn's millisecond (a
 * registration made after it is later than the agent's own).
 */
export async function sleepingAgent(
  t: TestKernel,
  spawner: string,
  name: string,
): Promise<{ c: KernelClient; a: Awaited<ReturnType<KernelClient["agents"]["spawn"]>>; agentPersona: string }> {
  const p = await t.persona(spawner, [
    { ops: ["agent.*"], targets: ["agent://**", "kernel://"] },
    { ops: ["system.health"], targets: ["kernel://"] },
  ]);
  const c = await t.connect(p.identity, [p.token]);
  const a = await c.agents.spawn("sh", name, {
    args: ["-c", "sleep 600"],
    rights: [{ ops: ["system.health"], targets: ["kernel://"] }],
    lifetimeMs: 600_000,
  });
  const spawnedAt = Date.now();
  await until(() => Date.now() > spawnedAt, 5_000, "a later millisecond");
  return { c, a, agentPersona: a.persona as string };
}
