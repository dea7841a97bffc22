import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { type ConnectOptions, type Connector, KernelClient } from "@kpip/client";
import type { Identity, Right } from "@kpip/protocol";
import type { Kernel, KernelOptions } from "../../src/index.js";
import { adminIdentity, removeHome, startKernel, type TestKernel } from "../harness.js";

const fixture = (f: string) => fileURLToPath(new URL(`../../../test/fixtures/${f}`, import.meta.url));
const tls = (f: string) => fixture(`tls/${f}`);

/** The rows of the README's feature × transport table, in order. */
export const FEATURES = {
  handshake: "handshake and attestation",
  system: "system ops",
  storage: "storage: write, read, stat, list, delete",
  tokens: "tokens: mint, inspect, revoke",
  events: "events: subscribe, emit, deliver",
  deferred: "DEFERRED compute ops",
  resources: "resources: alloc, query, free",
  agents: "agents: spawn, status, kill",
  errors: "errors by class",
  limits: "body limit enforced, service goes on",
  large: "large payloads (1.5 MiB)",
  audit: "audited, chain verifies",
} as const;

/** Limits every conformance kernel runs with, so the limit tests mean the same everywhere. */
export const CONFORMANCE_LIMITS = { maxBodyBytes: 2 * 1024 * 1024, largePayload: 1536 * 1024 };

/** A kernel reachable over one transport, and how a client connects over it. */
export interface TransportUnderTest {
  /** Column name in the README table. */
  name: string;
  /** What `client.transport` reports. */
  transport: string;
  start(): Promise<{
    k: Kernel;
    admin(): Promise<KernelClient>;
    persona(
      id: string,
      rights: Right[],
      limits?: Record<string, number>,
    ): Promise<{ identity: Identity; token: Uint8Array; id: string }>;
    connect(identity: Identity, tokens: Uint8Array[]): Promise<KernelClient>;
    stop(): Promise<void>;
  }>;
  /** Transport-specific checks on a ready session and after a large transfer. */
  checkSession?(c: KernelClient): Promise<void>;
  checkLarge?(u: { k: Kernel }, c: KernelClient): Promise<void>;
}

const KERNEL: KernelOptions = {
  maxBodyBytes: CONFORMANCE_LIMITS.maxBodyBytes,
  maxObjectBytes: CONFORMANCE_LIMITS.maxBodyBytes - 64 * 1024,
};

/** A harness kernel with the conformance limits and the "square" task the DEFERRED row runs. */
export function startConformanceKernel(kernelOpts: KernelOptions = {}): Promise<TestKernel> {
  return startKernel({ ...KERNEL, ...kernelOpts }, undefined, (k) =>
    k.registerTask("square", { module: fixture("tasks.mjs"), export: "square" }),
  );
}

/** Builds a transport from "how to connect a client" on top of a harness kernel. */
function over(
  name: string,
  transport: string,
  kernelOpts: KernelOptions,
  connectOpts: (t: TestKernel) => Partial<ConnectOptions> & { connector?: Connector },
  extra: Pick<TransportUnderTest, "checkSession" | "checkLarge"> = {},
): TransportUnderTest {
  return {
    name,
    transport,
    ...extra,
    start: async () => {
      const t = await startConformanceKernel(kernelOpts);
      const clients: KernelClient[] = [];
      const connect = async (identity: Identity, tokens: (Uint8Array | string)[]) => {
        const c = await KernelClient.connect({ identity, tokens, reconnect: false, ...connectOpts(t) } as ConnectOptions);
        clients.push(c);
        return c;
      };
      return {
        k: t.k,
        admin: () => connect(adminIdentity(t.k), [t.adminToken]),
        persona: (id, rights, limits) => t.persona(id, rights, limits ? { limits } : {}),
        connect,
        stop: async () => {
          for (const c of clients) await c.close().catch(() => {});
          await t.stop();
          removeHome(t.home);
        },
      };
    },
  };
}

export const TRANSPORTS: TransportUnderTest[] = [
  over("in-memory", "memory", {}, (t) => ({ connector: t.k.inMemoryConnector() as unknown as Connector })),
  over("Unix socket", "uds", {}, (t) => ({ socket: t.k.socketPath, shm: false })),
  over("Unix socket + shm", "uds", {}, (t) => ({ socket: t.k.socketPath, shm: { threshold: 64 * 1024 } }), {
    checkSession: async (c) => assert.deepEqual(c.features, ["shm"]),
    checkLarge: async (_u, c) => {
      assert.ok(c.shmFrames.sent > 0 && c.shmFrames.received > 0, "the large payload went through shared memory both ways");
    },
  }),
  over(
    "gRPC + TLS",
    "grpc",
    { grpcListen: "127.0.0.1:0", grpcTlsCert: tls("server.pem"), grpcTlsKey: tls("server.key") },
    (t) => ({ grpc: { address: t.k.grpcAddress as string, ca: readFileSync(tls("ca.pem")) } }),
  ),
];
