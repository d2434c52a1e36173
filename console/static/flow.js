// flowctl console: one flow's page. The graph with live cards and edge rates, charts
// per node, the figures as a table (readable without colour), dead letters, the log
// pane, and the lifecycle buttons (enabled only where the action applies).
import { $, api, canControl, debounced, follow, getJson, onPage, say } from "./api.js";
import { Charts } from "./charts.js";
import { DeadLetters } from "./dlq.js";
import { cell, el, empty, num, rate, stateClass, table } from "./dom.js";
import { drawGraph, updateGraph } from "./graph.js";

const ACTIONS = ["deploy", "start", "stop", "undeploy"];

function header(data) {
  const line = $("#flow-state");
  if (!line) return;
  line.textContent = `desired ${data.flow.state} · observed ${data.effective.observed} · ` +
    `revision ${data.flow.revision} · ${data.flow.spec.delivery}`;
  Object.assign(line.dataset, { observed: data.effective.observed, desired: data.flow.state });
  for (const a of ACTIONS) {
    const button = document.querySelector(`button[data-action="${a}"]`);
    if (button) button.disabled = !data.actions.includes(a);
  }
}

function nodesTable(graph, figures, deadLetters) {
  const rows = graph.nodes.map((n) => {
    const f = figures[n.id] || { state: "no status" };
    return [cell(n.id), cell(f.state, stateClass(f.state)), cell(f.reason || ""),
            cell(rate(f.rate_in || 0), "num"), cell(rate(f.rate_out || 0), "num"), num(f.lag),
            num(f.in), num(f.out), num(f.filtered), num(f.errors), num(f.dropped),
            num(deadLetters[n.id] || 0)];
  });
  return table(["Node", "State", "Reason", "In/s", "Out/s", "Lag", "In", "Out", "Filtered",
                "Errors", "Dropped", "Dead letters"], rows, { id: "nodes-table" });
}

function logPane(name) {
  const pre = el("pre", { id: "logs", "aria-live": "off" });
  const note = empty("Reading the stored log lines…");
  note.id = "logs-empty";
  let lines = 0;
  follow(`/api/flows/${encodeURIComponent(name)}/logs?follow=true`, (type, ev) => {
    if (type === "log") {
      lines += 1;
      note.hidden = true;
      pre.hidden = false;
      pre.append(`${ev.ts || ""} ${ev.node}.${ev.replica} ${ev.stream === "error" ? "[error] " : ""}${ev.line}\n`);
      pre.scrollTop = pre.scrollHeight;
    } else if ((type === "end" || type === "note") && !lines) {
      note.textContent = type === "note" ? `No log lines: ${ev.note}.`
        : "No log lines kept for this flow yet: new ones appear here as its replicas write them.";
    }
  });
  pre.hidden = true;
  return [note, pre];
}

export async function showFlow(name, page) {
  const main = $("#main");
  const path = `/api/flows/${encodeURIComponent(name)}`;
  main.replaceChildren(el("h2", {}, `flow/${name}`), el("p", { id: "flow-state", role: "status" }, "…"));
  const [data, series] = await Promise.all([getJson(path), getJson(`${path}/series`)]);
  if (!onPage(page)) return;
  let current = data, figures = data.nodes, ports = {};
  if (canControl()) {
    main.append(el("div", { role: "group", "aria-label": "Lifecycle", class: "actions" },
      ...ACTIONS.map((a) => el("button", { type: "button", "data-action": a, onclick: () => act(a) },
                               a[0].toUpperCase() + a.slice(1)))));
  }
  const svg = drawGraph(data.graph);
  const charts = el("section", { id: "charts", "aria-label": "charts" });
  const nodes = el("div", { id: "nodes" });
  const dlqSection = el("section", { id: "dead-letters", "aria-label": "dead letters" });
  main.append(svg, el("h3", {}, `Rates and lag, last ${Math.round(series.keep_s / 60)} minutes`), charts,
              el("h3", {}, "Nodes"), nodes, el("h3", {}, "Dead letters"), dlqSection,
              el("h3", {}, "Logs"), ...logPane(name));
  header(data);
  const plots = new Charts(charts, data.graph.nodes.map((n) => n.id), series.keep_s);
  plots.add(series.samples);
  const dlq = new DeadLetters(dlqSection, name, page, () => current.flow.state !== "not_deployed");
  const draw = () => {
    updateGraph(svg, data.graph, figures, ports, dlq.counts);
    nodes.replaceChildren(nodesTable(data.graph, figures, dlq.counts));
  };
  const last = series.samples[series.samples.length - 1];
  if (last) ports = last.ports;
  draw();
  const refreshDlq = debounced(() => dlq.refresh().then(draw).catch(() => {}), 500);
  refreshDlq();

  const reload = async () => {
    const fresh = await getJson(path);
    if (!onPage(page)) return;
    if (fresh.flow.revision !== current.flow.revision) { window.dispatchEvent(new HashChangeEvent("hashchange")); return; }
    current = fresh;
    header(fresh);
    dlq.render();
  };
  const reloadSoon = debounced(() => reload().catch((err) => say(err.message)), 400);
  async function act(action) {
    say("");
    try {
      await api(`${path}/actions/${action}`, { method: "POST" });
      await reload();
    } catch (err) { say(`${action} failed: ${err.message}`); }
  }

  let errors = -1;
  const states = Object.fromEntries(data.status.map((s) => [`${s.flow}.${s.node}.${s.replica}`, s.state]));
  follow(`/api/events?flow=${encodeURIComponent(name)}`, (type, ev) => {
    if (type === "resync") { reloadSoon(); refreshDlq(); return; }
    if (type === "sample") {
      ({ nodes: figures, ports } = ev.value);
      plots.add([ev.value]);
      const now = Object.values(figures).reduce((sum, f) => sum + f.errors + f.replayed, 0);
      if (now !== errors) { errors = now; refreshDlq(); }
      draw();
    } else if (type === "change" && ev.bucket === "flowctl_flows") {
      reloadSoon();  // the flow's record: the header and buttons
    } else if (type === "change" && ev.bucket === "flowctl_status") {
      const now = ev.op === "del" ? null : ev.value.state;
      if (states[ev.key] !== now) { states[ev.key] = now; reloadSoon(); }  // observed state
    }
  });
  return plots;
}
