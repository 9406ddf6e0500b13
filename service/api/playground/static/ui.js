// Small DOM helpers and what the page knows of the models (from /v1/models and each manifest).

/** h("p", {className: "x"}, "text", child) -> a new element. */
export function h(tag, props = {}, ...children) {
  const element = Object.assign(document.createElement(tag), props);
  element.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return element;
}

/** Replace a select's options by `choices` ([value, text] pairs), keeping the chosen value where it remains. */
export function fillSelect(select, choices) {
  const before = select.value;
  select.replaceChildren(...choices.map(([value, text]) => h("option", { value, textContent: text })));
  if (choices.some(([value]) => String(value) === before)) select.value = before;
}

/** A label wrapping `text` and a control. */
export const labelled = (text, control) => h("label", {}, `${text} `, control);

export const randomSeed = () => crypto.getRandomValues(new Uint32Array(1))[0];

/** The served models: {name, info (GET /v1/models entry), manifest (GET /v1/models/{name}/manifest)}. */
export const models = [];

/** Models with every capability of `capabilities` and, if given, data of `kind` (image, audio, text). */
export const modelsWith = (capabilities, kind) => models.filter(({ info }) =>
  capabilities.every((c) => info.capabilities.includes(c)) && (!kind || info.data.kind === kind));

export const byName = (name) => models.find((model) => model.name === name);

/** The input names of the function behind a model's capability (e.g. whether sampling takes a label). */
export function inputsOf(model, capability) {
  const fn = model.manifest.capabilities[capability]?.function;
  return new Set((model.manifest.functions[fn]?.inputs ?? []).map((input) => input.name));
}

/** Fill a model select with the models given; returns the select. */
export function modelSelect(select, chosen) {
  fillSelect(select, chosen.map(({ name, info }) => [name, `${name} (${info.family})`]));
  return select;
}

/** The number of levels of a model's values (2 for binarized digits, 256 for gray). */
export const levelsOf = (model) => model.info.data.levels ?? 256;
