/**
 * @kpip/client — the persona runtime. Of the kpip packages it depends on @kpip/protocol only; it
 * needs no native module (shared memory goes through the segments' files in /dev/shm).
 */

export { type BackoffPolicy, backoffDelay } from "./backoff.js";
export { KernelClient } from "./client.js";
export type { Channel, Connector } from "./connectors/connector.js";
export { FallbackConnector, GrpcConnector, type GrpcConnectorOptions } from "./connectors/grpc.js";
export { UdsConnector } from "./connectors/uds.js";
export * from "./errors.js";
export {
  type AgentCallOptions,
  OpsApi,
  type PersonaEntry,
  PersonasApi,
  StorageApi,
  type StoredObject,
  SystemApi,
  type TokenEntry,
  TokensApi,
} from "./families.js";
export { loadIdentity } from "./identity.js";
export { type OpAnswer, type OpCall, type OpRequest, type OpResponse, opCall, opRequest } from "./op-call.js";
export type { CallFn, CallOptions, CallResult, ClientState, ConnectOptions } from "./options.js";
export type { PutLargeOptions, ReadLargeOptions } from "./storage-large.js";
export { DEFAULT_BUFFER_BYTES, DEFAULT_BUFFER_EVENTS, type SubscribeOptions, type Subscription } from "./subscription.js";
