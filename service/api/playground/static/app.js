// The playground's entry: the API key, the model list (GET /v1/models and each manifest), and the sections, one
// per location hash (#sample, #score, ..., #models/NAME). A section shows only where some model can do it.

import { apiKey, getJSON, show, task } from "./api.js";
import { showCard, showModelList } from "./cards.js";
import { setupImages, showImageModels } from "./images.js";
import { setupMedia, showMediaModels } from "./media.js";
import { models, modelsWith } from "./ui.js";

const SECTIONS = {  // section -> whether the served models offer it
  sample: () => modelsWith(["sample"], "image").length > 0,
  score: () => modelsWith(["score"], "image").length > 0,
  complete: () => modelsWith(["complete"], "image").length > 0,
  latent: () => modelsWith(["encode", "decode"], "image").length > 0,
  audio: () => modelsWith(["sample"], "audio").length > 0,
  text: () => modelsWith(["sample"], "text").length > 0,
  models: () => models.length > 0,
};

const status = document.getElementById("boot-status");

function route() {
  const [section, name] = location.hash.slice(1).split("/");
  const offered = Object.keys(SECTIONS).filter((id) => SECTIONS[id]());
  const shown = offered.includes(section) ? section : offered[0];
  for (const id of Object.keys(SECTIONS)) document.getElementById(id).hidden = id !== shown;
  for (const link of document.querySelectorAll("nav a")) {
    const id = link.hash.slice(1);
    link.hidden = !offered.includes(id);
    link.toggleAttribute("aria-current", id === shown);
  }
  if (shown === "models") showCard(decodeURIComponent(name ?? ""));
}

/** Read the models and their manifests, then show what they offer. */
function load() {
  return task(status, "reading the models", async (signal) => {
    const { models: listed } = await getJSON("v1/models", { signal });
    const manifests = await Promise.all(listed.map(({ name }) =>
      getJSON(`v1/models/${encodeURIComponent(name)}/manifest`, { signal })));
    models.splice(0, models.length, ...listed.map((info, i) => ({ name: info.name, info, manifest: manifests[i] })));
    showImageModels();
    showMediaModels();
    showModelList();
    route();
    if (!models.length) show(status, "the server serves no models", "error");
  });
}

const keyForm = document.getElementById("key-form");
keyForm.key.value = apiKey.get();
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey.set(keyForm.key.value.trim());
  load();
});
window.addEventListener("hashchange", route);
setupImages();
setupMedia();
route();
load();
