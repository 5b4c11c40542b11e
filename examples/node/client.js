#!/usr/bin/env node
// A Node.js client of the ffhq-uv gateway: one photo in, the head's files out.
//
//   npm ci                         # @grpc/grpc-js, @grpc/proto-loader, protobufjs
//   node client.js --addr 127.0.0.1:50051 --image photo.jpg --out out/ [--request-id ID]
//                  [--token T] [--preset fast|standard|best] [--deadline SECONDS]
//
// Streams ReconstructStream (progress lines on stderr), downloads every artifact with
// GetArtifact into --out, and prints one JSON line on stdout: {request_id, files, metrics,
// warnings}. A failed call prints one JSON line {error: {code, message, reason, field,
// retry_after_s}} read from the google.rpc.Status details, and exits 1 (2 for bad usage).
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");

function parseArgs(argv) {
  const args = { preset: "standard", deadline: 1800 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-/g, "_");
    if (argv[i + 1] === undefined) usage(`missing value for ${argv[i]}`);
    args[key] = argv[i + 1];
  }
  for (const need of ["addr", "image", "out"]) if (!args[need]) usage(`--${need} is required`);
  return args;
}

function usage(msg) {
  process.stderr.write(`client.js: ${msg}\n`);
  process.exit(2);
}

function loadGateway() {
  const def = protoLoader.loadSync("ffhquv/gateway/v1/gateway.proto", {
    includeDirs: [PROTO_ROOT], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  return grpc.loadPackageDefinition(def).ffhquv.gateway.v1;
}

// google.rpc.Status and the three detail messages ffhq-uv sends (field numbers of
// google/rpc/status.proto and google/rpc/error_details.proto).
const rpcTypes = protobuf.Root.fromJSON({ nested: {
  Status: { fields: { code: { type: "int32", id: 1 }, message: { type: "string", id: 2 },
                      details: { rule: "repeated", type: "Any", id: 3 } } },
  Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } },
  ErrorInfo: { fields: { reason: { type: "string", id: 1 }, domain: { type: "string", id: 2 },
                         metadata: { keyType: "string", type: "string", id: 3 } } },
  FieldViolation: { fields: { field: { type: "string", id: 1 },
                              description: { type: "string", id: 2 } } },
  BadRequest: { fields: { field_violations: { rule: "repeated", type: "FieldViolation",
                                              id: 1 } } },
  Duration: { fields: { seconds: { type: "int64", id: 1 }, nanos: { type: "int32", id: 2 } } },
  RetryInfo: { fields: { retry_delay: { type: "Duration", id: 1 } } },
} });

function errorDetails(err) {
  const out = { code: grpc.status[err.code] || String(err.code), message: err.details || "" };
  const raw = err.metadata && err.metadata.get("grpc-status-details-bin")[0];
  if (!raw) return out;
  const status = rpcTypes.lookupType("Status").decode(raw);
  for (const any of status.details) {
    const name = any.type_url.split("/").pop();
    if (name === "google.rpc.ErrorInfo") {
      out.reason = rpcTypes.lookupType("ErrorInfo").decode(any.value).reason;
    } else if (name === "google.rpc.BadRequest") {
      const v = rpcTypes.lookupType("BadRequest").decode(any.value).field_violations;
      if (v.length) out.field = v[0].field;
    } else if (name === "google.rpc.RetryInfo") {
      const d = rpcTypes.lookupType("RetryInfo").decode(any.value).retry_delay || {};
      out.retry_after_s = Number(d.seconds || 0) + (d.nanos || 0) / 1e9;
    }
  }
  return out;
}

function reconstruct(stub, request, metadata, deadline) {
  return new Promise((resolve, reject) => {
    let result = null;
    const call = stub.ReconstructStream(request, metadata, { deadline });
    call.on("data", (ev) => {
      if (ev.event === "progress") {
        process.stderr.write(`${ev.progress.stage} ${ev.progress.message}\n`);
      } else if (ev.event === "result") {
        result = ev.result;
      }
    });
    call.on("error", reject);
    call.on("end", () => (result ? resolve(result)
      : reject(new Error("stream ended without a result"))));
  });
}

function download(stub, artifact, metadata, deadline) {
  return new Promise((resolve, reject) => {
    const parts = [];
    const call = stub.GetArtifact({ artifact_id: artifact.id }, metadata, { deadline });
    call.on("data", (chunk) => parts.push(Buffer.from(chunk.data)));
    call.on("error", reject);
    call.on("end", () => resolve(Buffer.concat(parts)));
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const gateway = loadGateway();
  const stub = new gateway.Reconstruction(args.addr, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
  });
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set("authorization", `Bearer ${args.token}`);
  const deadline = new Date(Date.now() + Number(args.deadline) * 1000);
  const request = {
    request_id: args.request_id || "",
    image: { data: fs.readFileSync(args.image), filename: path.basename(args.image) },
    options: { preset: `PRESET_${args.preset.toUpperCase()}` },
  };
  try {
    const result = await reconstruct(stub, request, metadata, deadline);
    fs.mkdirSync(args.out, { recursive: true });
    const files = [];
    for (const artifact of result.artifacts) {
      const data = await download(stub, artifact, metadata, deadline);
      if (data.length !== Number(artifact.size_bytes)) {
        throw new Error(`${artifact.name}: got ${data.length} of ${artifact.size_bytes} bytes`);
      }
      fs.writeFileSync(path.join(args.out, path.basename(artifact.name)), data);
      files.push(artifact.name);
    }
    process.stdout.write(JSON.stringify({ request_id: result.request_id, files,
      metrics: result.metrics, warnings: result.warnings }) + "\n");
  } catch (err) {
    const error = err.code !== undefined ? errorDetails(err) : { message: String(err) };
    process.stdout.write(JSON.stringify({ error }) + "\n");
    process.exitCode = 1;
  } finally {
    stub.close();
  }
}

main();
