// flowctl console: building the page (elements, tables, empty states).
const SVG = new Set(["svg", "g", "rect", "text", "path", "defs", "marker", "title", "tspan"]);

export function el(tag, attrs = {}, ...children) {
  const node = SVG.has(tag) ? document.createElementNS("http://www.w3.org/2000/svg", tag)
                            : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (k === "disabled") node.disabled = Boolean(v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c));
  return node;
}

export function table(headers, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r))));
}
export const cell = (v, cls = "") => el("td", cls ? { class: cls } : {}, v);
export const fmt = (v) => Math.round(v || 0).toLocaleString("en-US");
export const num = (v) => cell(fmt(v), "num");
// A rate: one decimal below 10/s, whole numbers above.
export const rate = (v) => (v > 0 && v < 10 ? v.toFixed(1) : fmt(v));

// What an empty list or pane says instead of being blank.
export const empty = (text) => el("p", { class: "empty" }, text);

// CSS class of a state ("running 2/3" -> state-running).
export const stateClass = (s) => `state-${String(s || "none").split(" ")[0]}`;

export function age(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}
