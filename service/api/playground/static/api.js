// The REST API from the page: the key, JSON calls, server-sent events, and tasks with a spinner and a cancel button.
// Paths are relative to /playground/, so a server behind a path prefix works unchanged.

const KEY = "genserve-api-key";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) ?? "",
  set: (value) => (value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY)),
};

/** An answer that is not 2xx: `message` is the API's own error message, prefixed by the status and code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
  }
}

async function errorOf(response) {
  try {
    const { error } = await response.json();
    return typeof error === "string"  // the /v2 routes' body
      ? new ApiError(response.status, "error", error)
      : new ApiError(response.status, error.code, error.message);
  } catch {
    return new ApiError(response.status, "http", response.statusText || "no error body");
  }
}

/** GET (no body) or POST (a JSON body) `path` under /v1/...; resolves to the Response, rejects with ApiError. */
export async function call(path, { body, signal } = {}) {
  const headers = {};
  if (apiKey.get()) headers.authorization = `Bearer ${apiKey.get()}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`../${path}`, {
    method: body === undefined ? "GET" : "POST", headers, signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

export const getJSON = async (path, options) => (await call(path, options)).json();
export const postJSON = async (path, body, signal) => (await call(path, { body, signal })).json();

/** Server-sent events of a streaming answer: yields the data of each `chunk`, returns that of `done`. */
export async function* chunks(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError(response.status, "stream", "the stream ended before its `done` event");
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const fields = Object.fromEntries(buffer.slice(0, end).split("\n").map((line) => line.split(/: (.*)/s)));
      buffer = buffer.slice(end + 2);
      const data = JSON.parse(fields.data);
      if (fields.event === "chunk") yield data;
      else if (fields.event === "done") return data;
      else if (fields.event === "error") throw new ApiError(response.status, data.error.code, data.error.message);
    }
  }
}

const seconds = (start) => `${((performance.now() - start) / 1000).toFixed(1)} s`;

/** Run `work(signal)` with `status` (an element) showing a spinner, the elapsed time and a Cancel button; a new
 * task on the same status cancels the one before. Errors show the API's message. Resolves when the task ends. */
export async function task(status, label, work) {
  status.controller?.abort();
  const controller = new AbortController();
  status.controller = controller;
  const start = performance.now();
  const elapsed = Object.assign(document.createElement("span"), { className: "elapsed", textContent: "0.0 s" });
  const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
  cancel.addEventListener("click", () => controller.abort());
  status.className = "status busy";
  status.replaceChildren(Object.assign(document.createElement("span"), { className: "spinner" }),
    `${label}… `, elapsed, " ", cancel);
  const timer = setInterval(() => (elapsed.textContent = seconds(start)), 100);
  try {
    await work(controller.signal);
    if (status.controller === controller) show(status, `${label}: done in ${seconds(start)}`);
  } catch (error) {
    if (status.controller !== controller) return;  // replaced by a newer task, which reports itself
    if (error.name === "AbortError") show(status, `${label}: cancelled after ${seconds(start)}`);
    else show(status, error.message, "error");
  } finally {
    clearInterval(timer);
  }
}

/** Put a message in a status element (role "alert" for errors, so screen readers say it). */
export function show(status, message, kind = "") {
  status.className = `status ${kind}`;
  status.setAttribute("role", kind === "error" ? "alert" : "status");
  status.textContent = message;
}
