/**
 * A small persona: connects to the kernel that `npm start` runs, writes and reads storage,
 * subscribes to an event topic, and keeps going across a kernel restart.
 *
 *   npm run example:persona              # runs until Ctrl-C
 *   npm run example:persona -- --ticks 5 # stops after 5 ticks
 *
 * Identity and token default to the admin's in ./.kpip; set KPIP_IDENTITY and KPIP_TOKEN
 * to act as another persona. KPIP_TOKEN is read as `kpip` reads it: the token itself, or
 * @FILE (e.g. the file `kpip token mint --out FILE` wrote) — never pass a token on a command line.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { IdentityError, KernelClient, KernelUnavailableError, KpipError } from "@kpip/client";

const home = process.env.KPIP_HOME ?? ".kpip";
const ticksArg = process.argv.indexOf("--ticks");
const maxTicks = ticksArg > 0 ? Number(process.argv[ticksArg + 1]) : Number.POSITIVE_INFINITY;

/** $KPIP_TOKEN as the CLI takes it: the token text, or @FILE holding it. */
function tokenFromEnv(v: string | undefined): string | undefined {
  if (!v?.trim()) return undefined;
  return v.startsWith("@") ? readFileSync(v.slice(1), "utf8") : v.trim();
}

const socket = process.env.KPIP_SOCKET ?? join(home, "kernel.sock");
let client: KernelClient;
try {
  client = await KernelClient.connect({
    socket,
    identity: process.env.KPIP_IDENTITY ?? join(home, "admin.identity"),
    tokens: [tokenFromEnv(process.env.KPIP_TOKEN) ?? readFileSync(join(home, "admin.token"), "utf8")],
    workspace: "demo",
    waitForKernel: true,
    connectTimeoutMs: 30_000,
  });
} catch (e) {
  // A missing kernel or identity is the usual first-run mistake: say it plainly.
  const missingFile = (e as NodeJS.ErrnoException).code === "ENOENT";
  if (e instanceof KernelUnavailableError || e instanceof IdentityError || missingFile) {
    console.error(
      `[persona] ${(e as Error).message}\n[persona] start a kernel with \`npm start\` (home ${home}) and run this again`,
    );
    process.exit(1);
  }
  throw e;
}
client.on("state", (s) => console.log(`[persona] connection: ${s}`));
console.log(`[persona] connected as ${client.persona} (session ${client.sessionId})`);

// Events arrive on their own; the subscription is renewed after every reconnect.
const ticks = await client.events.subscribe("topic://demo/**");
void (async () => {
  for await (const e of ticks) console.log(`[persona] event ${e.topic} #${e.seq}${e.gap ? ` (missed ${e.gap})` : ""}:`, e.data);
})();

let stopping = false;
process.once("SIGINT", () => {
  stopping = true;
});

for (let tick = 1; tick <= maxTicks && !stopping; tick++) {
  try {
    // Each call waits through a kernel restart (up to its deadline) instead of failing.
    const { generation } = await client.storage.write("obj://demo/counter", String(tick), { deadlineMs: 20_000 });
    const back = await client.storage.read("obj://demo/counter", { deadlineMs: 20_000 });
    console.log(`[persona] tick ${tick}: wrote generation ${generation}, read back "${Buffer.from(back.data).toString()}"`);
    await client.events.emit("topic://demo/ticks", { tick }, { deadlineMs: 20_000 });
  } catch (e) {
    if (e instanceof KpipError) console.log(`[persona] the kernel refused tick ${tick}: ${e.errorClass} ${e.message}`);
    else console.log(`[persona] tick ${tick} failed locally: ${(e as Error).name}: ${(e as Error).message}`);
  }
  await new Promise((r) => setTimeout(r, 1000));
}

await ticks.unsubscribe();
await client.close();
console.log("[persona] done");
