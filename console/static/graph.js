// flowctl console: the flow's graph (nodes left to right by depth, edges labelled by
// port and their own rate), each node a card with its live figures, coloured by state.
import { el, fmt, rate } from "./dom.js";

const NODE_W = 220, NODE_H = 118, GAP_X = 110, GAP_Y = 30;
const CUT = 34;  // characters of a reason shown on the card (all of it in its tooltip)

export function drawGraph(graph) {
  const width = graph.columns * (NODE_W + GAP_X) + 20;
  const rows = Math.max(1, ...graph.nodes.map((n) => n.row + 1));
  const height = rows * (NODE_H + GAP_Y) + 20;
  const svg = el("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`,
                          role: "img", "aria-label": "flow graph" });
  svg.append(el("defs", {}, el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, el("path", { d: "M 0 0 L 10 5 L 0 10 z" }))));
  const at = {};
  for (const n of graph.nodes) at[n.id] = { x: 10 + n.column * (NODE_W + GAP_X), y: 10 + n.row * (NODE_H + GAP_Y) };
  for (const e of graph.edges) {
    const a = at[e.from], b = at[e.to];
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const id = `${e.from}.${e.from_port}->${e.to}.${e.to_port}`;
    svg.append(el("path", { class: "edge", "data-edge": id,
                            d: `M ${x1} ${y1} C ${x1 + 40} ${y1}, ${x2 - 40} ${y2}, ${x2} ${y2}` }));
    const mx = (x1 + x2) / 2 - 30, my = (y1 + y2) / 2;
    svg.append(el("text", { class: "port", x: mx, y: my - 6 }, `${e.from_port} → ${e.to_port}`),
               el("text", { class: "edge-rate", x: mx, y: my + 8, "data-edge-rate": id,
                            "data-port": `${e.from}.${e.from_port}` }, ""));
  }
  for (const n of graph.nodes) {
    const { x, y } = at[n.id];
    const line = (i, cls) => el("text", { x: 8, y: 16 + 18 * i, class: cls }, "");
    svg.append(el("g", { "data-node": n.id, class: "card", transform: `translate(${x},${y})` },
      el("title", {}, `${n.id} (${n.type})`),
      el("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      el("text", { x: 8, y: 16, class: "name" }, `${n.id} · ${n.type}`),
      line(1, "state"), line(2, "rates"), line(3, "counts"), line(4, "losses"), line(5, "reason")));
  }
  return svg;
}

const cut = (text) => (text.length > CUT ? text.slice(0, CUT - 1) + "…" : text);

// Figures: {node: {state, reason, rate_in, rate_out, lag, in, out, filtered, errors,
// dropped}}; ports: {"node.port": events/s}; deadLetters: {node: kept}.
export function updateGraph(svg, graph, figures, ports, deadLetters) {
  for (const n of graph.nodes) {
    const f = figures[n.id];
    const g = svg.querySelector(`g[data-node="${CSS.escape(n.id)}"]`);
    if (!g) continue;
    const set = (cls, text) => { g.querySelector(`.${cls}`).textContent = text; };
    const state = f ? f.state : "no status";
    const dead = deadLetters[n.id] || 0;
    set("state", `state: ${state}`);
    set("rates", f ? `in/s ${rate(f.rate_in)} · out/s ${rate(f.rate_out)} · lag ${fmt(f.lag)}` : "");
    set("counts", f ? `in ${fmt(f.in)} · out ${fmt(f.out)} · filtered ${fmt(f.filtered)}` : "");
    set("losses", f ? `errors ${fmt(f.errors)} · dropped ${fmt(f.dropped)} · dead ${fmt(dead)}` : "");
    const reason = (f && f.reason) || "";
    set("reason", reason ? cut(reason) : "");
    g.querySelector("title").textContent = `${n.id} (${n.type}): ${state}${reason ? " — " + reason : ""}`;
    g.setAttribute("class", `card state-${state.split(" ")[0].replace(/\s/g, "-")}`);
    Object.assign(g.dataset, { state, in: f ? f.in : 0, rateIn: f ? f.rate_in : 0,
                               rateOut: f ? f.rate_out : 0, filtered: f ? f.filtered : 0,
                               deadLetters: dead });
  }
  for (const t of svg.querySelectorAll("text[data-edge-rate]")) {
    const r = ports[t.dataset.port] || 0;
    t.textContent = `${rate(r)}/s`;
    t.dataset.rate = r;
  }
}
