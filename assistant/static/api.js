// The HTTP client: bearer key from localStorage, JSON in and out, errors with the server's
// detail, downloads, and a server-sent-events reader over fetch's ReadableStream.

const KEY_STORAGE = "assistant.apiKey";

export const auth = {
  get key() { return localStorage.getItem(KEY_STORAGE) || ""; },
  set(key) { localStorage.setItem(KEY_STORAGE, key); },
  clear() { localStorage.removeItem(KEY_STORAGE); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `request failed (${status})`);
    this.status = status;
  }
  /** The endpoint is not there (yet): unknown route or method. */
  get missing() { return this.status === 404 || this.status === 405; }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.key) h.Authorization = `Bearer ${auth.key}`;
  return h;
}

async function errorOf(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    detail = response.statusText;
  }
  if (response.status === 401 && !detail) detail = "invalid API key";
  return new ApiError(response.status, detail);
}

/** Send a request; return the parsed JSON body (or null for an empty one). */
export async function request(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "cannot reach the server — check your connection");
  }
  if (!response.ok) throw await errorOf(response);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const api = {
  get: (path, opts) => request("GET", path, undefined, opts),
  post: (path, body, opts) => request("POST", path, body ?? {}, opts),
  put: (path, body, opts) => request("PUT", path, body ?? {}, opts),
  patch: (path, body, opts) => request("PATCH", path, body ?? {}, opts),
  del: (path, opts) => request("DELETE", path, undefined, opts),
};

/** Fetch `path` with the key and save the response as a file named `filename`. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await errorOf(response);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Yield {event, data} from a text/event-stream response body. */
export async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const parsed = parseEvent(block);
        if (parsed) yield parsed;
      }
    }
    const last = parseEvent(buffer);
    if (last) yield last;
  } finally {
    reader.releaseLock();
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  const raw = data.join("\n");
  try {
    return { event, data: JSON.parse(raw) };
  } catch {
    return { event, data: raw };
  }
}

/** POST /api/chat with streaming; calls on.start/on.delta/on.done; returns the done payload. */
export async function streamChat(body, on, signal) {
  let response;
  try {
    response = await fetch("/api/chat", {
      method: "POST", signal,
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ ...body, stream: true }),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "cannot reach the server — check your connection");
  }
  if (!response.ok) throw await errorOf(response);
  let done = null;
  for await (const { event, data } of readEvents(response)) {
    if (event === "start") on.start?.(data);
    else if (event === "delta") on.delta?.(data);
    else if (event === "done") { done = data; on.done?.(data); }
    else if (event === "error") throw new ApiError(data?.status || 500, data?.detail || String(data));
  }
  if (!done) throw new ApiError(0, "the answer stream ended early");
  return done;
}
