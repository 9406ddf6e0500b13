// The image panels: sample a grid, score a drawing with every scoring model, complete what was erased, and walk
// the latent space between two drawings.

import { call, chunks, postJSON, show, task } from "./api.js";
import { Pad, blankCanvas, imageCanvas, paintRow } from "./pixels.js";
import { byName, fillSelect, h, inputsOf, labelled, levelsOf, modelSelect, modelsWith, randomSeed } from "./ui.js";

const pads = {};
const statusOf = (section) => document.querySelector(`#${section} .status`);

export function setupImages() {
  pads.score = new Pad(document.getElementById("score-pad"));
  pads.complete = new Pad(document.getElementById("complete-pad"), { masking: true });
  pads.complete.brush = "erase";
  pads.a = new Pad(document.getElementById("latent-a"));
  pads.b = new Pad(document.getElementById("latent-b"));
  for (const [section, names] of [["score", ["score"]], ["complete", ["complete"]], ["latent", ["a", "b"]]]) {
    for (const button of document.querySelectorAll(`#${section} button.clear`)) {
      button.addEventListener("click", () => pads[button.dataset.pad ?? names[0]].clear());
    }
  }
  for (const radio of document.querySelectorAll("input[name=complete-brush]")) {
    radio.addEventListener("change", () => (pads.complete.brush = radio.value));
  }
  setupSample();
  document.getElementById("score-run").addEventListener("click", scoreAll);
  setupComplete();
  setupLatent();
}

/** Models listed: called once the models are known. */
export function showImageModels() {
  const form = document.getElementById("sample-form");
  modelSelect(form.model, modelsWith(["sample"], "image"));
  if (form.model.value) sampleOptions(form);
  modelSelect(document.getElementById("complete-form").model, modelsWith(["complete"], "image"));
  modelSelect(document.getElementById("latent-form").model, modelsWith(["encode", "decode"], "image"));
}

// --- sample ------------------------------------------------------------------------------------------------------

function setupSample() {
  const form = document.getElementById("sample-form");
  form.model.addEventListener("change", () => sampleOptions(form));
  form.temperature.addEventListener("input", () => (form["temperature-value"].value = form.temperature.value));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    form.seed.value = randomSeed();
    sample(form);
  });
  document.getElementById("sample-again").addEventListener("click", () => form.reportValidity() && sample(form));
}

/** Show the options the chosen model takes: temperature, label, chain steps, controls (e.g. InfoGAN's codes). */
function sampleOptions(form) {
  const model = byName(form.model.value);
  const capability = model.manifest.capabilities.sample;
  const inputs = inputsOf(model, "sample");
  const classes = model.info.data.classes ?? [];
  form.querySelector(".temperature").hidden = !inputs.has("temperature");
  form.querySelector(".label").hidden = !(inputs.has("label") && classes.length);
  fillSelect(form.label, [["", "any (drawn from the prior)"], ...classes.map((name, i) => [i, name])]);
  form.querySelector(".steps").hidden = capability.procedure !== "markov_chain";
  form.steps.value = "";
  form.steps.placeholder = `default ${capability.steps ?? ""}`;
  form.steps.max = capability.max_steps ?? "";
  const box = form.querySelector(".sample-controls");
  const controls = Object.entries(capability.controls ?? {});
  box.hidden = controls.length === 0;
  box.replaceChildren(box.querySelector("legend"), ...controls.map(([name, spec]) => controlField(name, spec)));
}

/** A control as sliders: a categorical one's class, or a continuous one's values (low..high, default -3..3). */
function controlField(name, spec) {
  const categorical = spec.kind === "categorical";
  const count = categorical ? 1 : (spec.shape ?? [1]).reduce((a, b) => a * b, 1);
  const sliders = Array.from({ length: count }, (_, i) => {
    const slider = h("input", { type: "range", min: categorical ? 0 : spec.low ?? -3,
      max: categorical ? spec.classes - 1 : spec.high ?? 3, step: categorical ? 1 : 0.05, value: 0 });
    const output = h("output", { textContent: "0" });
    slider.addEventListener("input", () => (output.value = slider.value));
    return labelled(categorical ? "class" : `${name}[${i}]`, h("span", {}, slider, output));
  });
  const set = h("input", { type: "checkbox" });
  const field = h("div", { className: "control" }, labelled(`set ${name}`, set), sliders);
  field.control = name;
  field.read = () => {
    if (!set.checked) return undefined;
    const values = sliders.map((label) => Number(label.querySelector("input").value));
    return categorical ? values[0] : values;
  };
  return field;
}

function sampleBody(form) {
  const body = { n: Number(form.n.value), seed: Number(form.seed.value) };
  if (!form.querySelector(".temperature").hidden) body.temperature = Number(form.temperature.value);
  if (!form.querySelector(".label").hidden && form.label.value !== "") body.label = Number(form.label.value);
  if (!form.querySelector(".steps").hidden && form.steps.value) body.steps = Number(form.steps.value);
  const controls = {};
  for (const field of form.querySelectorAll(".control")) {
    const value = field.read();
    if (value !== undefined) controls[field.control] = value;
  }
  if (Object.keys(controls).length) body.controls = controls;
  return body;
}

/** A grid of samples; auto-regressive models stream theirs row by row (server-sent events). */
function sample(form) {
  const model = byName(form.model.value);
  const levels = levelsOf(model);
  const body = sampleBody(form);
  const grid = document.getElementById("sample-grid");
  const canvases = Array.from({ length: body.n }, (_, i) => blankCanvas(`sample ${i + 1}, seed ${body.seed}`));
  const cells = canvases.map((canvas, i) => h("button", { type: "button", className: "cell",
    title: "put this sample on the drawing pads", ariaLabel: `sample ${i + 1}: put it on the drawing pads` }, canvas));
  grid.replaceChildren(...cells);
  const images = [];
  cells.forEach((cell, i) => cell.addEventListener("click", () => images[i] && toPads(images[i], levels)));
  const streams = model.manifest.capabilities.sample.procedure === "autoregressive";
  return task(statusOf("sample"), `sampling ${body.n} from ${model.name}`, async (signal) => {
    if (streams) {
      const rows = canvases.map(() => []);
      const stream = chunks(await call(`v1/models/${model.name}/sample/stream`, { body, signal }));
      for await (const { step, values } of stream) {
        values.forEach((row, i) => (paintRow(canvases[i], step, row, levels), rows[i].push(row)));
      }
      images.push(...rows);
    } else {
      const { samples } = await postJSON(`v1/models/${model.name}/sample`, { ...body, format: "array" }, signal);
      samples.forEach((image, i) => canvases[i].replaceWith(imageCanvas(image, levels, canvases[i].ariaLabel)));
      images.push(...samples);
    }
  });
}

function toPads(image, levels) {
  for (const pad of Object.values(pads)) pad.load(image, levels);
  show(statusOf("sample"), "put on the drawing pads of Score, Complete and Latent space");
}

// --- score -------------------------------------------------------------------------------------------------------

const BOUNDS = {
  exact: "exact log p(x)", elbo: "ELBO: a lower bound", iwae: "IWAE: a lower bound", ais: "AIS estimate of log p(x)",
  dequantized: "dequantization: a lower bound", critic: "critic score: no likelihood",
};

/** The drawing scored by every image model that scores, side by side. */
function scoreAll() {
  const chosen = modelsWith(["score"], "image");
  const results = document.getElementById("score-results");
  const cards = chosen.map((model) => h("div", { className: "card" },
    h("h3", { textContent: model.name }), h("p", { textContent: "…" })));
  results.replaceChildren(...cards);
  return task(statusOf("score"), `scoring with ${chosen.length} models`, (signal) => Promise.all(chosen.map(
    async (model, i) => {
      try {
        const body = { inputs: [pads.score.levels(levelsOf(model))] };
        const { results: [result] } = await postJSON(`v1/models/${model.name}/score`, body, signal);
        cards[i].replaceChildren(h("h3", { textContent: model.name }), ...scoreLines(result));
      } catch (error) {
        if (error.name === "AbortError") throw error;
        cards[i].replaceChildren(h("h3", { textContent: model.name }),
          h("p", { className: "error", role: "alert", textContent: error.message }));
      }
    })));
}

/** A score result as lines: the bound it is, nats, bits/dim, and the anomaly percentile as a gauge. */
export function scoreLines(result) {
  const bound = BOUNDS[result.method] ?? result.method;
  const k = result.k ? `, k = ${result.k}` : "";
  const stderr = result.stderr ? ` ± ${result.stderr.toFixed(2)}` : "";
  const lines = [h("p", { className: "method", textContent: `${bound}${k}` })];
  if (result.log_likelihood_nats !== null && result.log_likelihood_nats !== undefined) {
    lines.push(h("p", { className: "value" }, h("strong", { textContent: result.log_likelihood_nats.toFixed(2) }),
      ` nats${stderr}`), h("p", { textContent: `${result.bits_per_dim.toFixed(4)} bits/dim` }));
  } else if (result.critic !== undefined) {
    lines.push(h("p", { className: "value" }, h("strong", { textContent: result.critic.toFixed(3) }), " critic"));
  }
  const anomaly = result.anomaly;
  if (anomaly && anomaly.percentile !== null) {
    const percentile = anomaly.percentile;
    lines.push(labelled("anomaly percentile", h("meter", { min: 0, max: 100, low: 90, high: 99, optimum: 0,
      value: percentile })), h("p", { className: anomaly.is_anomaly ? "flag" : "", textContent:
      `${percentile.toFixed(1)} (${anomaly.method ?? "default"})${anomaly.is_anomaly ? ": anomalous" : ""}` }));
  }
  return lines;
}

// --- complete ----------------------------------------------------------------------------------------------------

function setupComplete() {
  const form = document.getElementById("complete-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const model = byName(form.model.value);
    const levels = levelsOf(model);
    const body = { inputs: [pads.complete.levels(levels)], mask: pads.complete.mask(), n: Number(form.n.value),
      seed: Number(form.seed.value), format: "array" };
    const out = document.getElementById("complete-results");
    task(statusOf("complete"), `${body.n} completions from ${model.name}`, async (signal) => {
      const { completions: [images] } = await postJSON(`v1/models/${model.name}/complete`, body, signal);
      out.replaceChildren(...images.map((image, i) => imageCanvas(image, levels, `completion ${i + 1}`)));
    });
  });
}

// --- latent space ------------------------------------------------------------------------------------------------

const SLICE = 3;  // the 2-D slice spans -3..3 on each of its two dimensions

function setupLatent() {
  const form = document.getElementById("latent-form");
  const walk = { z: [], images: [], levels: 2, model: null, point: [0, 0] };
  const t = document.getElementById("latent-t");
  const view = document.getElementById("latent-view");
  const showPoint = () => view.replaceChildren(imageCanvas(walk.images[t.value], walk.levels, `point ${t.value}`));
  t.addEventListener("input", () => (showPoint(), drawSlice(walk)));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const model = byName(form.model.value);
    const levels = levelsOf(model);
    const body = { inputs: [pads.a.levels(levels), pads.b.levels(levels)], steps: Number(form.steps.value) };
    task(statusOf("latent"), `encoding A and B with ${model.name}`, async (signal) => {
      const { z, images } = await postJSON(`v1/models/${model.name}/interpolate`, body, signal);
      Object.assign(walk, { z, images, levels, model });
      t.max = z.length - 1;
      t.value = 0;
      const strip = document.getElementById("latent-strip");
      strip.replaceChildren(...images.map((image, i) => imageCanvas(image, levels, `point ${i} of ${z.length}`)));
      const dims = z[0].map((_, d) => [d, `z[${d}]`]);
      fillSelect(document.getElementById("latent-i"), dims);
      fillSelect(document.getElementById("latent-j"), dims);
      if (document.getElementById("latent-j").value === "0") document.getElementById("latent-j").value = "1";
      document.getElementById("latent-walk").hidden = false;
      showPoint();
      drawSlice(walk);
    });
  });
  setupSlice(walk, t);
}

/** Decode the walk's current point with two of its dimensions set from the slice. */
function setupSlice(walk, t) {
  const slice = document.getElementById("latent-slice");
  const decodeAt = (u, v) => {
    walk.point = [u, v];
    drawSlice(walk);
    const z = [...walk.z[t.value]];
    z[document.getElementById("latent-i").value] = u;
    z[document.getElementById("latent-j").value] = v;
    task(statusOf("latent"), `decoding (${u.toFixed(2)}, ${v.toFixed(2)})`, async (signal) => {
      const { images: [image] } = await postJSON(`v1/models/${walk.model.name}/decode`, { z: [z] }, signal);
      document.getElementById("latent-decoded").replaceChildren(imageCanvas(image, walk.levels, "decoded point"));
    });
  };
  slice.addEventListener("click", (event) => {
    const box = slice.getBoundingClientRect();
    decodeAt(((event.clientX - box.left) / box.width) * 2 * SLICE - SLICE,
      SLICE - ((event.clientY - box.top) / box.height) * 2 * SLICE);
  });
  slice.addEventListener("keydown", (event) => {
    const moves = { ArrowLeft: [-0.25, 0], ArrowRight: [0.25, 0], ArrowUp: [0, 0.25], ArrowDown: [0, -0.25] };
    if (!(event.key in moves) || !walk.model) return;
    event.preventDefault();
    const clamp = (x) => Math.min(SLICE, Math.max(-SLICE, x));
    decodeAt(clamp(walk.point[0] + moves[event.key][0]), clamp(walk.point[1] + moves[event.key][1]));
  });
}

function drawSlice(walk) {
  const slice = document.getElementById("latent-slice");
  const context = slice.getContext("2d");
  const { width, height } = slice;
  context.fillStyle = "#111";
  context.fillRect(0, 0, width, height);
  context.strokeStyle = "#444";
  context.beginPath();
  context.moveTo(width / 2, 0); context.lineTo(width / 2, height);
  context.moveTo(0, height / 2); context.lineTo(width, height / 2);
  context.stroke();
  const [u, v] = walk.point;
  context.fillStyle = "#3af";
  context.beginPath();
  context.arc(((u + SLICE) / (2 * SLICE)) * width, ((SLICE - v) / (2 * SLICE)) * height, 4, 0, 2 * Math.PI);
  context.fill();
}
