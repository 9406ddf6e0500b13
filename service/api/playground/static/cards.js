// Model cards, from each manifest: family, data, test metrics with their method, calibration, provenance, sample
// pictures, and the curl and grpcurl calls for each capability.

import { postJSON, task } from "./api.js";
import { imageCanvas } from "./pixels.js";
import { byName, h, levelsOf, models } from "./ui.js";

const GRPC = { sample: "Sample", score: "Score", complete: "Complete", encode: "Encode", decode: "Decode",
  predict: "Predict", stream: "SampleStream" };

/** capability -> [REST body, gRPC body]: an example call of each capability the data kind has. */
function examples(model) {
  const { kind, shape = [], classes = [] } = model.info.data;
  const tensor = (what, dtype, dims) => ({ dtype, shape: dims, data: `<base64 of ${what}>` });
  if (kind === "text") {
    const sample = { n: 1, seed: 0, prompt: "The ", length: 80 };
    return { sample: [sample, sample], score: [{ inputs: ["Return the number of items."] },
      { texts: ["Return the number of items."] }], complete: [{ inputs: ["def "], length: 40 },
      { texts: ["def "], length: 40 }], stream: [sample, sample] };
  }
  if (kind === "audio") {
    const wav = "<base64 WAV file>";
    return { sample: [{ seconds: 1.0, voice: 0, seed: 0 }, { seconds: 1.0, voice: classes[0], seed: 0 }],
      score: [{ inputs: [wav] }, { wavs: [wav] }], complete: [{ inputs: [wav], seconds: 0.5 },
        { wavs: [wav], seconds: 0.5 }], stream: [{ seconds: 2.0, voice: 0, chunk_ms: 100 },
        { seconds: 2.0, voice: classes[0], chunk_ms: 100 }] };
  }
  const { capabilities } = model.manifest;
  if (capabilities.sample?.procedure === "state_space") return stateSpaceExamples(capabilities.sample, shape, tensor);
  const image = "[[0, ..., 0], ... a row of levels per line]";
  const levels = tensor("the little-endian int64 levels", "int64", [1, ...shape]);
  const decoder = model.manifest.functions[capabilities.decode?.function];
  const latents = decoder?.inputs[0].shape.at(-1) ?? 0;
  const words = capabilities.sample?.prompt?.vocabulary;  // a caption model samples from a caption
  const sample = words ? { n: 4, seed: 0, prompt: caption(words) } : { n: 4, seed: 0 };
  return { sample: [sample, sample], score: [{ inputs: [image] }, { inputs: levels }],
    complete: [{ inputs: [image], mask: "[[1, ..., 0], ... 1 = observed]", n: 2, seed: 0 },
      { inputs: levels, mask: tensor("the int64 mask, 1 = observed", "int64", shape), n: 2, seed: 0 }],
    encode: [{ inputs: [image] }, { inputs: levels }],
    decode: [{ z: [Array(latents).fill(0)] }, { z: tensor("the little-endian float32 latents", "float32",
      [1, latents]) }] };
}

/** "a thin seven", of the words the caption model knows. */
const caption = (words) => ["a", "thin", "seven"].filter((word) => words.includes(word)).join(" ")
  || words.find(Boolean);

/** A state-space model's calls: K observed frames (the fewest it filters from) and actions at the middle of the
 * range trained on (capabilities.*.actions), action t moving frame t to t + 1; sample rolls out 8. */
function stateSpaceExamples({ init_frames: k, actions: { shape, low, high } }, frameShape, tensor) {
  const action = shape.reduceRight((inner, size) => Array(size).fill(inner), (low + high) / 2);
  const actions = (count) => [Array(count).fill(action),
    tensor("the little-endian float32 actions", "float32", [count, ...shape])];
  const frames = [[`[frame 1], ..., [frame ${k}]: ${k} frames, each a row of levels per line`],
    tensor("the little-endian int64 levels", "int64", [1, k, ...frameShape])];
  const call = (more, count) => actions(count).map((u, i) => ({ ...more[i], actions: u }));
  return { sample: call([{ n: 1, seed: 0 }, { n: 1, seed: 0 }], 8),
    encode: call(frames.map((inputs) => ({ inputs })), k - 1),
    predict: call(frames.map((inputs) => ({ inputs })), k - 1 + 4) };
}

export function showModelList() {
  const list = document.getElementById("model-list");
  list.replaceChildren(...models.map(({ name, info }) =>
    h("li", {}, h("a", { href: `#models/${name}`, textContent: name }), ` ${info.family}`)));
}

/** The card of `name`, or the first model's. */
export function showCard(name) {
  const model = byName(name) ?? models[0];
  if (!model) return;
  const { manifest, info } = model;
  const provenance = manifest.provenance ?? {};
  document.getElementById("model-card").replaceChildren(
    h("h3", { textContent: `${model.name} v${info.version}: ${info.family}` }),
    h("p", { textContent: info.description ?? "" }),
    h("h4", { textContent: "Data" }), table(dataRows(info.data)),
    h("h4", { textContent: "Test metrics" }), table(metricRows(info.metrics)),
    h("h4", { textContent: "Anomaly calibration" }), table(calibrationRows(manifest.calibration)),
    h("h4", { textContent: "Provenance" }), table([
      ["command", provenance.command ?? provenance.config?.command], ["git commit", provenance.git_commit],
      ["dataset", provenance.dataset], ["split", JSON.stringify(provenance.split)], ["seed", provenance.seed],
      ["exported", provenance.exported_at], ["torch", provenance.torch_version]]),
    h("details", {}, h("summary", { textContent: "training config" }),
      h("pre", { textContent: JSON.stringify(provenance.config ?? {}, null, 2) })),
    samplePictures(model),
    h("h4", { textContent: "Calls" }), ...calls(model));
}

const table = (rows) => h("table", {}, rows.filter(([, value]) => value !== undefined && value !== null)
  .map(([key, value]) => h("tr", {}, h("th", { scope: "row", textContent: key }), h("td", { textContent: value }))));

const dataRows = (data) => Object.entries(data).filter(([key]) => key !== "class_prior")
  .map(([key, value]) => [key, Array.isArray(value) ? value.join(", ") : typeof value === "object"
    ? JSON.stringify(value) : value]);

const number = (value) => (typeof value === "number" && !Number.isInteger(value) ? value.toPrecision(6) : value);

const metricRows = (metrics) => Object.entries(metrics)
  .filter(([, value]) => typeof value !== "object" || value === null)
  .map(([key, value]) => [key, number(value)]);

function calibrationRows(calibration) {
  if (!calibration) return [["calibration", "none"]];
  const detectors = Object.keys(calibration.detectors ?? {});
  return [["score", calibration.score], ["held-out inputs", calibration.n], ["split", calibration.split],
    ["anomaly threshold", `percentile ${100 * calibration.threshold_quantile}`],
    ["default detector", calibration.default], ["detectors", detectors.length ? detectors.join(", ") : undefined]];
}

function samplePictures(model) {
  if (model.info.data.kind !== "image" || !model.info.capabilities.includes("sample")) return null;
  const strip = h("div", { className: "strip" });
  const status = h("div", { className: "status", role: "status" });
  const button = h("button", { type: "button", textContent: "Show 8 samples (seed 0)" });
  button.addEventListener("click", () => task(status, `sampling ${model.name}`, async (signal) => {
    const { samples } = await postJSON(`v1/models/${model.name}/sample`, { n: 8, seed: 0, format: "array" }, signal);
    strip.replaceChildren(...samples.map((image, i) => imageCanvas(image, levelsOf(model), `sample ${i + 1}`)));
  }));
  return h("div", {}, h("h4", { textContent: "Samples" }), button, status, strip);
}

/** curl and grpcurl for each capability the model has (REST on this page's origin; gRPC on port + 1 by default). */
function calls(model) {
  const grpcTarget = `${location.hostname}:${Number(location.port || 80) + 1}`;
  const bodies = examples(model);
  return model.info.capabilities.filter((capability) => bodies[capability]).map((capability) => {
    const [rest, grpc] = bodies[capability];
    const path = capability === "stream" ? "sample/stream" : capability;
    const curl = `curl -sN ${location.origin}/v1/models/${model.name}/${path} \\\n`
      + `  -H "authorization: Bearer $GENSERVE_API_KEY" -H 'content-type: application/json' -d '${JSON.stringify(rest)}'`;
    const grpcurl = `grpcurl -plaintext -H "authorization: Bearer $GENSERVE_API_KEY" \\\n`
      + `  -d '${JSON.stringify({ model: model.name, ...grpc })}' ${grpcTarget} genserve.v1.Genserve/${GRPC[capability]}`;
    return h("div", { className: "call" }, h("h5", { textContent: capability }), h("pre", { textContent: curl }),
      h("pre", { textContent: grpcurl }));
  });
}
