// flowctl console: a small single-page app over the HTTP API (no build step).
// Routes: #/ (flows), #/flows/NAME (graph, live figures, logs, actions), #/agents.
// Live updates come from server-sent events (/api/events, /api/flows/NAME/logs), read
// with fetch so the bearer token can be sent; they are KV watches on the server side.
"use strict";

// state.page counts route changes: a fetch that answers after the user moved on (or a
// list redraw still pending when a flow was opened) finds its page gone and draws nothing.
const state = { info: null, stream: null, logs: null, statuses: {}, flow: null, page: 0,
                redraw: null };
const onPage = (page) => page === state.page;
const $ = (sel) => document.querySelector(sel);

function token() {
  const fromUrl = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (fromUrl) {
    sessionStorage.setItem("flowctl-token", decodeURIComponent(fromUrl[1]));
    const rest = location.hash.replace(/[#&]?token=[^&]+/, "") || "#/";
    history.replaceState(null, "", rest);  // the token leaves the address bar, no reload
  }
  return sessionStorage.getItem("flowctl-token");
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) $("#token-form").hidden = false;
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return response;
}
const getJson = async (path) => (await api(path)).json();

function say(message) {
  const el = $("#error");
  el.hidden = !message;
  el.textContent = message || "";
}

function el(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "rect", "text", "path", "defs", "marker", "title"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c));
  return node;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
            el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r))));
}
const cell = (v, cls = "") => el("td", cls ? { class: cls } : {}, v);
const num = (v) => cell(Math.round(v || 0).toLocaleString("en-US"), "num");

// ----------------------------------------------------------------- event streams
async function readEvents(path, onEvent, controller) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const response = await fetch(path, { headers, signal: controller.signal });
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

function follow(path, onEvent) {
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
  return controller;
}

function stopStreams() {
  for (const key of ["stream", "logs"]) {
    if (state[key]) state[key].abort();
    state[key] = null;
  }
  clearTimeout(state.redraw);
}

// ----------------------------------------------------------------- pages
async function showFlows(page) {
  const flows = await getJson("/api/flows");
  if (!onPage(page)) return;
  const main = $("#main");
  main.replaceChildren(el("h2", {}, "Flows"),
    flows.length ? table(["Name", "Desired", "Observed", "Nodes", "Revision", "Delivery"],
      flows.map((f) => [cell(el("a", { href: `#/flows/${f.name}` }, f.name)), cell(f.desired),
                        cell(f.observed, `state-${f.observed}`), num(f.nodes), num(f.revision),
                        cell(f.delivery)]))
      : el("p", {}, "No flows yet: flowctl apply -f FILE"));
  main.querySelector("table")?.setAttribute("id", "flows");
}

const NODE_W = 190, NODE_H = 96, GAP_X = 90, GAP_Y = 30;

function nodeFigures(id) {
  const sums = { state: [], in: 0, out: 0, rin: 0, rout: 0, lag: 0, errors: 0, dropped: 0 };
  for (const s of Object.values(state.statuses)) {
    if (!s || s.node !== id) continue;
    const c = s.counters || {};
    sums.state.push(s.state);
    sums.in += c.in || 0; sums.out += c.out || 0;
    sums.errors += c.errors || 0; sums.dropped += c.dropped || 0;
    sums.rin += (s.rate || {}).in || 0; sums.rout += (s.rate || {}).out || 0;
    sums.lag = Math.max(sums.lag, Object.values(s.lag || {}).reduce((a, b) => a + b, 0));
  }
  const states = [...new Set(sums.state)];
  sums.state = states.length === 1 ? states[0] : states.length ? states.join("/") : "no status";
  return sums;
}

function drawGraph(graph) {
  const width = graph.columns * (NODE_W + GAP_X) + 20;
  const rows = Math.max(1, ...graph.nodes.map((n) => n.row + 1));
  const svg = el("svg", { class: "graph", width, height: rows * (NODE_H + GAP_Y) + 20,
                          role: "img", "aria-label": "flow graph" });
  svg.append(el("defs", {}, el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, el("path", { d: "M 0 0 L 10 5 L 0 10 z" }))));
  const at = {};
  for (const n of graph.nodes) at[n.id] = { x: 10 + n.column * (NODE_W + GAP_X), y: 10 + n.row * (NODE_H + GAP_Y) };
  for (const e of graph.edges) {
    const a = at[e.from], b = at[e.to];
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    svg.append(el("path", { class: "edge", d: `M ${x1} ${y1} C ${x1 + 40} ${y1}, ${x2 - 40} ${y2}, ${x2} ${y2}`,
                            "data-edge": `${e.from}.${e.from_port}->${e.to}.${e.to_port}` }));
    svg.append(el("text", { class: "port", x: (x1 + x2) / 2 - 20, y: (y1 + y2) / 2 - 4 },
                  `${e.from_port} → ${e.to_port}`));
  }
  for (const n of graph.nodes) {
    const { x, y } = at[n.id];
    const g = el("g", { "data-node": n.id, transform: `translate(${x},${y})` },
      el("title", {}, `${n.id} (${n.type})`),
      el("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      el("text", { x: 8, y: 16, "font-weight": "600" }, `${n.id} · ${n.type}`),
      el("text", { x: 8, y: 34, class: "state" }, ""),
      el("text", { x: 8, y: 52, class: "rates" }, ""),
      el("text", { x: 8, y: 70, class: "counts" }, ""),
      el("text", { x: 8, y: 88, class: "losses" }, ""));
    svg.append(g);
  }
  return svg;
}

function refreshFigures() {
  if (!state.flow) return;
  const rows = [];
  for (const n of state.flow.graph.nodes) {
    const f = nodeFigures(n.id);
    const g = document.querySelector(`g[data-node="${CSS.escape(n.id)}"]`);
    if (g) {
      g.querySelector(".state").textContent = `state: ${f.state}`;
      g.querySelector(".rates").textContent = `in/s ${Math.round(f.rin)} · out/s ${Math.round(f.rout)} · lag ${f.lag}`;
      g.querySelector(".counts").textContent = `in ${f.in} · out ${f.out}`;
      g.querySelector(".losses").textContent = `errors ${f.errors} · dropped ${f.dropped}`;
      g.dataset.in = f.in; g.dataset.state = f.state;
    }
    rows.push([cell(n.id), cell(f.state, `state-${f.state}`), num(f.rin), num(f.rout), num(f.lag),
               num(f.in), num(f.out), num(f.errors), num(f.dropped)]);
  }
  $("#nodes").replaceChildren(table(["Node", "State", "In/s", "Out/s", "Lag", "In", "Out", "Errors", "Dropped"], rows));
}

async function loadFlow(name, page) {
  const data = await getJson(`/api/flows/${encodeURIComponent(name)}`);
  if (!onPage(page)) return null;
  state.flow = data;
  state.statuses = {};
  for (const s of data.status) state.statuses[`${s.flow}.${s.node}.${s.replica}`] = s;
  $("#flow-state").textContent = `desired ${data.flow.state} · observed ${data.effective.observed} · revision ${data.flow.revision}`;
  $("#flow-state").dataset.observed = data.effective.observed;
  $("#flow-state").dataset.desired = data.flow.state;
  return data;
}

async function act(name, action, page) {
  say("");
  try {
    await api(`/api/flows/${encodeURIComponent(name)}/actions/${action}`, { method: "POST" });
    if (await loadFlow(name, page)) refreshFigures();
  } catch (err) { say(`${action} failed: ${err.message}`); }
}

async function showFlow(name, page) {
  const main = $("#main");
  main.replaceChildren(el("h2", {}, `flow/${name}`), el("p", { id: "flow-state", role: "status" }, "…"));
  const data = await loadFlow(name, page);
  if (!data) return;
  if (state.info && state.info.allow_control) {
    main.append(el("div", { role: "group", "aria-label": "Lifecycle" },
      ...["deploy", "start", "stop", "undeploy"].map((a) =>
        el("button", { type: "button", "data-action": a, onclick: () => act(name, a, page) },
           a[0].toUpperCase() + a.slice(1)))));
  }
  main.append(drawGraph(data.graph), el("h3", {}, "Nodes"), el("div", { id: "nodes" }),
              el("h3", {}, "Logs"), el("pre", { id: "logs", "aria-live": "off" }));
  refreshFigures();
  state.stream = follow(`/api/events?flow=${encodeURIComponent(name)}`, (type, ev) => {
    if (type === "resync") { loadFlow(name, page).then(refreshFigures).catch(() => {}); return; }
    if (type !== "change") return;
    if (ev.bucket === "flowctl_status") {
      if (ev.op === "del") delete state.statuses[ev.key]; else state.statuses[ev.key] = ev.value;
      refreshFigures();
    } else if (ev.bucket === "flowctl_flows") {
      loadFlow(name, page).then(refreshFigures).catch(() => {});
    }
  });
  let lastId = null;
  state.logs = follow(`/api/flows/${encodeURIComponent(name)}/logs?follow=true`, (type, ev, id) => {
    if (type !== "log") return;
    if (id) lastId = id;
    const pre = $("#logs");
    if (!pre) return;
    pre.append(`${ev.ts || ""} ${ev.node}.${ev.replica} ${ev.stream === "error" ? "[error] " : ""}${ev.line}\n`);
    pre.scrollTop = pre.scrollHeight;
  });
  void lastId;
}

async function showAgents(page) {
  const agents = await getJson("/api/agents");
  if (!onPage(page)) return;
  $("#main").replaceChildren(el("h2", {}, "Agents"),
    table(["Name", "Host", "Labels", "Live", "Heartbeat", "Replicas", "CPU %", "Memory MB", "Loop lag"],
      agents.map((a) => [cell(a.name), cell(a.host),
        cell(Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "-"),
        cell(a.live ? "yes" : "NO", a.live ? "state-running" : "state-failed"), cell(`${a.age_s}s ago`),
        num(a.components.length), num(a.cpu_percent), num(a.memory_mb), cell(`${Math.round(a.loop_lag_ms)} ms`)])));
}

async function route() {
  const page = ++state.page;
  stopStreams();
  state.flow = null;
  say("");
  const hash = location.hash || "#/";
  try {
    if (!state.info) state.info = await getJson("/api/info");
    if (!onPage(page)) return;
    const flow = /^#\/flows\/([^/]+)$/.exec(hash);
    if (flow) await showFlow(decodeURIComponent(flow[1]), page);
    else if (hash === "#/agents") await showAgents(page);
    else {
      await showFlows(page);
      if (!onPage(page)) return;
      state.stream = follow("/api/events", (type, ev) => {
        if (type === "resync" || (type === "change" && ev.bucket !== "flowctl_agents")) {
          clearTimeout(state.redraw);
          state.redraw = setTimeout(() => showFlows(page).catch((e) => say(e.message)), 300);
        }
      });
    }
    $("#main").focus();
  } catch (err) { say(err.message); }
}

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("flowctl-token", $("#token").value);
  $("#token-form").hidden = true;
  state.info = null;
  route();
});
window.addEventListener("hashchange", route);
token();
route();
