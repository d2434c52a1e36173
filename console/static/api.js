// flowctl console: talking to the API (the bearer token, JSON, server-sent events).
// Event streams are read with fetch so the token can be sent; on the server they are
// KV watches, never polling. `state.page` counts route changes: a fetch that answers
// after the user moved on finds its page gone and draws nothing.
export const state = { info: null, streams: [], page: 0, cancels: [] };
export const onPage = (page) => page === state.page;
export const $ = (sel) => document.querySelector(sel);

export function token() {
  const fromUrl = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (fromUrl) {
    sessionStorage.setItem("flowctl-token", decodeURIComponent(fromUrl[1]));
    const rest = location.hash.replace(/[#&]?token=[^&]+/, "") || "#/";
    history.replaceState(null, "", rest);  // the token leaves the address bar, no reload
  }
  return sessionStorage.getItem("flowctl-token");
}

function headers(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: "Bearer " + t } : extra;
}

export async function api(path, options = {}) {
  const response = await fetch(path, { ...options,
    headers: headers({ Accept: "application/json", ...(options.headers || {}) }) });
  if (response.status === 401) $("#token-form").hidden = false;
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return response;
}
export const getJson = async (path) => (await api(path)).json();
export const postJson = async (path) => (await api(path, { method: "POST" })).json();

export function say(message) {
  const el = $("#error");
  el.hidden = !message;
  el.textContent = message || "";
}

// A control (the console allows control and a token is there or not needed).
export const canControl = () => Boolean(state.info && state.info.allow_control);

async function readEvents(path, onEvent, controller) {
  const response = await fetch(path, { headers: headers(), signal: controller.signal });
  if (!response.ok) throw new Error(`${response.status} on ${path}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = { type: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event.type = line.slice(7);
        else if (line.startsWith("data: ")) event.data += line.slice(6);
        else if (line.startsWith("id: ")) event.id = line.slice(4);
      }
      if (event.data) onEvent(event.type, JSON.parse(event.data), event.id);
    }
  }
}

// Follow an event stream until the page changes; reconnects (then a "resync" event).
export function follow(path, onEvent) {
  const controller = new AbortController();
  const live = $("#live");
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        live.textContent = "live";
        await readEvents(path, onEvent, controller);
      } catch (err) {
        if (controller.signal.aborted) return;
        live.textContent = "reconnecting…";
      }
      await new Promise((r) => setTimeout(r, 1000));
      onEvent("resync", {}, null);
    }
  };
  run();
  state.streams.push(controller);
  return controller;
}

// Run `fn` once, `ms` after the last call (a burst of changes: one refetch).
// Cancelled when the page changes.
export function debounced(fn, ms) {
  let timer = null;
  state.cancels.push(() => clearTimeout(timer));
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

export function leavePage() {
  for (const c of state.streams) c.abort();
  for (const cancel of state.cancels) cancel();
  state.streams = [];
  state.cancels = [];
}
