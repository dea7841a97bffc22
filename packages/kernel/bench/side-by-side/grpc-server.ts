/**
 * Baseline B of `npm run bench`: `@grpc/grpc-js` unary calls over a Unix socket. One method,
 * `/bench.Echo/Echo`, echoing its bytes; messages are raw buffers (no protobuf work), so the
 * cost measured is grpc-js's own. Prints `{ "ready": true }` on stdout when bound to argv[2].
 */
import * as grpc from "@grpc/grpc-js";

const raw = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
export const ECHO: grpc.ServiceDefinition = {
  Echo: {
    path: "/bench.Echo/Echo",
    requestStream: false,
    responseStream: false,
    requestSerialize: raw.serialize,
    requestDeserialize: raw.deserialize,
    responseSerialize: raw.serialize,
    responseDeserialize: raw.deserialize,
  },
};

const server = new grpc.Server({ "grpc.max_receive_message_length": 80 * 1024 * 1024 });
server.addService(ECHO, {
  Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request),
});
server.bindAsync(`unix://${process.argv[2]}`, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid })}\n`);
});
process.on("SIGTERM", () => server.tryShutdown(() => process.exit(0)));
