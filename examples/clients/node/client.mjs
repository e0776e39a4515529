// A whole mi-crow workflow from Node.js: load a model, stream activations (decoding the raw little-endian
// float32 rows), train an SAE on a worker and watch it, run SAE inference, save a concept config.
// Addresses and names come from the environment; a JSON summary goes to stdout for the caller to check.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "../../../protos");
const definition = protoLoader.loadSync(
  ["mi_crow/v1/inference.proto", "mi_crow/v1/artifacts.proto"],
  { includeDirs: [protoRoot], keepCase: true, longs: Number, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).mi_crow.v1;

const env = (name, fallback) => process.env[name] ?? fallback;
const inference = new v1.InferenceService(env("MI_CROW_INFERENCE_ADDRESS"), grpc.credentials.createInsecure());
const artifacts = new v1.ArtifactService(env("MI_CROW_ARTIFACTS_ADDRESS"), grpc.credentials.createInsecure());
const jobs = new v1.JobService(env("MI_CROW_ARTIFACTS_ADDRESS"), grpc.credentials.createInsecure());
const model = env("MODEL_ID", "tiny");
const layer = env("LAYER", "transformer_h_0");
const texts = JSON.parse(env("TEXTS", '["the cat sat on the mat"]'));

const call = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + 120_000 }, (err, reply) => (err ? reject(err) : resolve(reply))),
  );

function decodeFloat32(chunk) {
  if (chunk.dtype !== "FLOAT32" || !chunk.little_endian) throw new Error(`unexpected chunk ${chunk.dtype}`);
  const [rows, width] = chunk.shape;
  const aligned = new Uint8Array(chunk.data); // copy: Float32Array needs a 4-byte aligned offset
  const values = new Float32Array(aligned.buffer, 0, rows * width);
  return { rows, width, values };
}

async function streamActivations() {
  const stream = inference.StreamActivations({ model_id: model, layers: [layer], dataset: { texts } });
  let rows = 0, width = 0, sum = 0, sequence = -1, last = false;
  for await (const chunk of stream) {
    if (chunk.sequence !== sequence + 1) throw new Error(`chunk ${chunk.sequence} out of order`);
    sequence = chunk.sequence;
    const decoded = decodeFloat32(chunk);
    if (decoded.rows !== chunk.token_ids.length) throw new Error("token ids do not match rows");
    rows += decoded.rows;
    width = decoded.width;
    for (const v of decoded.values) sum += v;
    last = chunk.last;
  }
  return { rows, width, sum, chunks: sequence + 1, last };
}

function watch(jobId) {
  return new Promise((resolve, reject) => {
    let final = null;
    const states = [];
    const stream = jobs.WatchJob({ job_id: jobId });
    stream.on("data", (job) => { final = job; states.push(job.state); });
    stream.on("error", reject);
    stream.on("end", () => resolve({ final, states }));
  });
}

async function main() {
  const loaded = await call(inference, "LoadModel", { model_id: model });
  const activations = await streamActivations();
  const saved = await call(inference, "SaveActivations", {
    model_id: model, layers: [layer], dataset: { texts }, run_id: env("RUN_ID", "node-run"),
  });
  const job = await call(jobs, "SubmitTraining", {
    model_id: model, run_id: saved.run_id, layer, epochs: 2, batch_size: 32, k: 4,
  });
  const { final, states } = await watch(job.job_id);
  const sae = await call(inference, "InferSae", {
    model_id: model, sae_id: final.sae_id, prompts: [texts[0]], top_k_neurons: 3,
  });
  const strongest = sae.outputs[0].top_latents[0]?.latent ?? 0;
  const config = await call(artifacts, "ManipulateConcepts", {
    sae: { model_id: model, sae_id: final.sae_id }, edits: { [strongest]: { scale: 2.0, bias: 0.0 } }, name: "from-node",
  });
  console.log(JSON.stringify({
    loaded: loaded.loaded,
    activations,
    run: { run_id: saved.run_id, n_tokens: saved.n_tokens },
    job: { state: final.state, sae_id: final.sae_id, states, explained_variance: final.metrics.explained_variance },
    top_latents: sae.outputs[0].top_latents.map((l) => l.latent),
    config: { name: config.name, path: config.path, scale: config.edits[strongest].scale },
  }));
}

main().then(
  () => process.exit(0),
  (err) => { console.error(err); process.exit(1); },
);
