import type { KernelClient } from "@kpip/client";
import type { Identity } from "@kpip/protocol";
import { type TestKernel, withKernel } from "./harness.js";

/** A persona of {@link withTwoTrees}: its key, its token, and its client. */
export interface TreePersona {
  identity: Identity;
  token: Uint8Array;
  id: string;
  client: KernelClient;
}

/**
 * `fn` on a kernel whose clock moves only when the test moves it (`tick`): each persona tree's
 * budget of new token bytes is spent and refilled exactly as the test says. bob and eve, two
 * trees, are each allowed system.health on kernel:// and connected (one attempt): one fills a
 * kernel-wide memory of tokens with fresh offline attenuations, the other must keep its place.
 */
export async function withTwoTrees(
  fn: (s: { t: TestKernel; bob: TreePersona; eve: TreePersona; tick(ms: number): void }) => Promise<void>,
): Promise<void> {
  let now = Date.now();
  await withKernel({ clock: () => now }, async (t) => {
    const right = { ops: ["system.health"], targets: ["kernel://"] };
    const persona = async (name: string): Promise<TreePersona> => {
      const p = await t.persona(name, [right]);
      return { ...p, client: await t.connect(p.identity, [p.token], { maxAttempts: 1 }) };
    };
    const bob = await persona("bob");
    const eve = await persona("eve");
    await fn({
      t,
      bob,
      eve,
      tick: (ms) => {
        now += ms;
      },
    });
  });
}
