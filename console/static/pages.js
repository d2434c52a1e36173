// flowctl console: the flow list and the agents page, both live.
import { $, debounced, follow, getJson, onPage, say } from "./api.js";
import { age, cell, el, empty, num, stateClass, table } from "./dom.js";

async function drawFlows(page) {
  const flows = await getJson("/api/flows");
  if (!onPage(page)) return;
  $("#main").replaceChildren(el("h2", {}, "Flows"),
    flows.length ? table(["Name", "Desired", "Observed", "Nodes", "Revision", "Delivery"],
      flows.map((f) => [cell(el("a", { href: `#/flows/${f.name}` }, f.name)), cell(f.desired),
                        cell(f.observed, stateClass(f.observed)), num(f.nodes), num(f.revision),
                        cell(f.delivery)]), { id: "flows" })
      : empty("No flows yet: flowctl apply -f FILE (or flowctl up -f FILE) adds one."));
}

// What an agent runs: its replica keys (flow.node.replica) grouped by flow.
function runs(components) {
  if (!components.length) return "nothing";
  const byFlow = {};
  for (const key of components) {
    const [flow, ...rest] = key.split(".");
    (byFlow[flow] = byFlow[flow] || []).push(rest.join("."));
  }
  return Object.entries(byFlow).map(([flow, nodes]) => `${flow}: ${nodes.sort().join(", ")}`).join("; ");
}

async function drawAgents(page) {
  const agents = await getJson("/api/agents");
  if (!onPage(page)) return;
  $("#main").replaceChildren(el("h2", {}, "Agents"),
    agents.length ? table(["Name", "Host", "Labels", "Live", "Heartbeat", "Loop lag", "CPU %",
                           "Memory MB", "Replicas", "Runs"],
      agents.map((a) => [cell(a.name), cell(a.host),
        cell(Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "-"),
        cell(a.live ? "yes" : "NO (silent)", a.live ? "state-running" : "state-failed"),
        cell(age(a.age_s), "num"), cell(`${Math.round(a.loop_lag_ms)} ms`, "num"),
        num(a.cpu_percent), num(a.memory_mb), num(a.components.length),
        cell(runs(a.components), "runs")]), { id: "agents" })
      : empty("No agents: start one with flowctl agent (flowctl run and dev start their own)."));
}

// Draw now, then again (a burst of changes: once) on each change `wanted` or a resync.
async function live(page, draw, wanted, ms) {
  await draw(page);
  if (!onPage(page)) return;
  const redraw = debounced(() => draw(page).catch((e) => say(e.message)), ms);
  follow("/api/events", (type, ev) => {
    if (type === "resync" || (type === "change" && wanted(ev))) redraw();
  });
}

export const showFlows = (page) => live(page, drawFlows, (ev) => ev.bucket !== "flowctl_agents", 300);
export const showAgents = (page) => live(page, drawAgents, (ev) => ev.bucket === "flowctl_agents", 500);
