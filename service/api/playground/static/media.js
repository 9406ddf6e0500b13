// Audio (a WAV stream played with Web Audio as it arrives, then downloadable; an uploaded WAV scored) and text
// (characters as the server streams them).

import { call, chunks, postJSON, task } from "./api.js";
import { scoreLines } from "./images.js";
import { byName, fillSelect, h, modelSelect, modelsWith } from "./ui.js";

const WAV_HEADER = 44;  // the server's streamed WAV: a 44-byte header, then 16-bit little-endian PCM
const statusesOf = (section) => document.querySelectorAll(`#${section} > .status`);
let audio;  // one AudioContext for the page, made on the first click (browsers allow sound only after one)

export function setupMedia() {
  const form = document.getElementById("audio-form");
  form.model.addEventListener("change", () => voices(form));
  form.addEventListener("submit", (event) => (event.preventDefault(), generateAudio(form)));
  document.getElementById("audio-score-form").addEventListener("submit", (event) => {
    event.preventDefault();
    scoreWav(event.target.file.files[0], byName(form.model.value));
  });
  document.getElementById("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    generateText(event.target);
  });
}

export function showMediaModels() {
  const form = document.getElementById("audio-form");
  modelSelect(form.model, modelsWith(["sample"], "audio"));
  if (form.model.value) voices(form);
  modelSelect(document.getElementById("text-form").model, modelsWith(["sample"], "text"));
}

function voices(form) {
  const classes = byName(form.model.value).info.data.classes ?? [];
  fillSelect(form.voice, [["", "any (drawn from the prior)"], ...classes.map((name, i) => [i, name])]);
}

// --- audio -------------------------------------------------------------------------------------------------------

function generateAudio(form) {
  const model = byName(form.model.value);
  const body = { n: 1, seconds: Number(form.seconds.value), seed: Number(form.seed.value),
    temperature: Number(form.temperature.value), chunk_ms: 100 };
  if (form.voice.value !== "") body.voice = Number(form.voice.value);
  const progress = document.getElementById("audio-progress");
  const download = document.getElementById("audio-download");
  download.hidden = true;
  audio ??= new AudioContext();
  const [status] = statusesOf("audio");
  return task(status, `${body.seconds} s from ${model.name}`, async (signal) => {
    const response = await call(`v1/models/${model.name}/sample/stream`, { body, signal });
    const wav = await play(response, (bytes, seconds) =>
      (progress.textContent = `${bytes} bytes received, ${seconds.toFixed(2)} s of audio queued`));
    URL.revokeObjectURL(download.href);
    Object.assign(download, { href: URL.createObjectURL(wav), download: `${model.name}-seed${body.seed}.wav`,
      hidden: false });
  });
}

/** Play a streamed WAV as its bytes arrive (each whole frame queued right after the one before); resolves to the
 * whole file as a Blob. */
async function play(response, progress) {
  const reader = response.body.getReader();
  const parts = [];
  let format = null, pending = new Uint8Array(0), received = 0, queued = 0;
  let at = audio.currentTime + 0.1;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.length;
    let bytes = new Uint8Array(pending.length + value.length);
    bytes.set(pending);
    bytes.set(value, pending.length);
    if (!format) {
      if (bytes.length < WAV_HEADER) {
        pending = bytes;
        continue;
      }
      format = wavFormat(bytes);
      bytes = bytes.subarray(WAV_HEADER);
    }
    const whole = bytes.length - (bytes.length % (2 * format.channels));
    pending = bytes.slice(whole);
    if (whole) {
      const buffer = pcmBuffer(bytes.subarray(0, whole), format);
      const source = new AudioBufferSourceNode(audio, { buffer });
      source.connect(audio.destination);
      at = Math.max(at, audio.currentTime);
      source.start(at);
      at += buffer.duration;
      queued += buffer.duration;
    }
    progress(received, queued);
  }
  return new Blob(parts, { type: "audio/wav" });
}

function wavFormat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, WAV_HEADER);
  const tag = (offset) => String.fromCharCode(...bytes.subarray(offset, offset + 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE" || view.getUint16(34, true) !== 16) {
    throw new Error("the stream is not a 16-bit PCM WAV file");
  }
  return { channels: view.getUint16(22, true), sampleRate: view.getUint32(24, true) };
}

/** 16-bit little-endian PCM, frames of `channels` samples -> an AudioBuffer. */
function pcmBuffer(bytes, { channels, sampleRate }) {
  const frames = bytes.length / (2 * channels);
  const buffer = audio.createBuffer(channels, frames, sampleRate);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let c = 0; c < channels; c++) {
    const out = buffer.getChannelData(c);
    for (let f = 0; f < frames; f++) out[f] = view.getInt16(2 * (f * channels + c), true) / 32768;
  }
  return buffer;
}

function scoreWav(file, model) {
  const [, status] = statusesOf("audio");
  const out = document.getElementById("audio-score");
  return task(status, `scoring ${file.name} with ${model.name}`, async (signal) => {
    const base64 = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));  // past "data:...;base64,"
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    const { results: [result] } = await postJSON(`v1/models/${model.name}/score`, { inputs: [base64] }, signal);
    out.replaceChildren(h("div", { className: "card" }, h("h3", { textContent: `${model.name}: ${file.name}` }),
      ...scoreLines(result)));
  });
}

// --- text --------------------------------------------------------------------------------------------------------

function generateText(form) {
  const model = byName(form.model.value);
  const body = { n: 1, prompt: form.prompt.value, length: Number(form.length.value), seed: Number(form.seed.value),
    temperature: Number(form.temperature.value) };
  if (Number(form.top_k.value) > 0) body.top_k = Number(form.top_k.value);
  const out = document.getElementById("text-out");
  out.textContent = "";
  const [status] = statusesOf("text");
  return task(status, `${body.length} characters from ${model.name}`, async (signal) => {
    const stream = chunks(await call(`v1/models/${model.name}/sample/stream`, { body, signal }));
    for await (const { text } of stream) out.textContent += text[0];
  });
}
