// flowctl console: a small single-page app over the HTTP API (no build step: plain
// ES modules). Routes: #/ (flows), #/flows/NAME (graph, charts, dead letters, logs,
// actions), #/agents. Live updates come from server-sent events (see api.js).
import { $, getJson, leavePage, onPage, say, state, token } from "./api.js";
import { showFlow } from "./flow.js";
import { showAgents, showFlows } from "./pages.js";

let charts = null;

async function route() {
  const page = ++state.page;
  leavePage();
  if (charts) charts.destroy();
  charts = null;
  say("");
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href") === hash);
  }
  try {
    if (!state.info) state.info = await getJson("/api/info");
    if (!onPage(page)) return;
    const flow = /^#\/flows\/([^/]+)$/.exec(hash);
    if (flow) {
      const drawn = await showFlow(decodeURIComponent(flow[1]), page);
      if (onPage(page)) charts = drawn; else if (drawn) drawn.destroy();
    }
    else if (hash === "#/agents") await showAgents(page);
    else await showFlows(page);
    $("#main").focus({ preventScroll: true });
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
