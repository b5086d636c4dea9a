// The page's client for /ui/api: the optional API key, errors as ApiError, and streamed turns.

const KEY = "gptoss.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0: the server could not be reached
    this.code = code;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
}

export function setApiKey(key, remember) {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
  if (key) (remember ? localStorage : sessionStorage).setItem(KEY, key);
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(res) {
  let code = null;
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code;
      message = body.error.message || message;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch (_) { /* not JSON */ }
  return new ApiError(res.status, code, message);
}

async function send(method, path, body, signal) {
  let res;
  try {
    res = await fetch(path, {
      method, headers: headers(body !== undefined), signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", "The server cannot be reached. Is `gptoss serve` still running?");
  }
  if (!res.ok) throw await failure(res);
  return res;
}

export const api = {
  info: async () => (await send("GET", "/ui/api/info")).json(),
  list: async () => (await send("GET", "/ui/api/conversations")).json(),
  get: async (id) => (await send("GET", `/ui/api/conversations/${encodeURIComponent(id)}`)).json(),
  create: async (settings) => (await send("POST", "/ui/api/conversations", settings)).json(),
  patch: async (id, fields) => (await send("PATCH", `/ui/api/conversations/${encodeURIComponent(id)}`, fields)).json(),
  remove: async (id) => (await send("DELETE", `/ui/api/conversations/${encodeURIComponent(id)}`)).json(),
  stop: async (id) => (await send("POST", `/ui/api/conversations/${encodeURIComponent(id)}/stop`)).json(),
  exportBlob: async (id, format) => {
    const res = await send("GET", `/ui/api/conversations/${encodeURIComponent(id)}/export?format=${format}`);
    const disposition = res.headers.get("Content-Disposition") || "";
    const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || `conversation.${format}`;
    return { blob: await res.blob(), name };
  },
  health: async () => (await send("GET", "/health")).json(),
};

// Run a turn; calls onEvent(event) for each streamed event. Resolves when the stream ends.
export async function streamTurn(id, body, onEvent, signal) {
  const res = await send("POST", `/ui/api/conversations/${encodeURIComponent(id)}/turn`, body, signal);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let ended = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of chunk.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const event = JSON.parse(line.slice(5));
          if (event.type === "done" || event.type === "error") ended = true;
          onEvent(event);
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", "The connection to the server was lost mid-answer.");
  }
  if (!ended) throw new ApiError(0, "unreachable", "The answer ended early: the server went away.");
}
