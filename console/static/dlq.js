// flowctl console: a flow's dead letters (FLOWCTL_DLQ): kept per node, shown, replayed
// into the node's input (control, with the token) as `flowctl dlq replay` does.
import { api, canControl, getJson, onPage, say } from "./api.js";
import { cell, el, empty, num, table } from "./dom.js";

const SHOWN = 100;  // dead letters shown at once (oldest first)

export class DeadLetters {
  // `replayable()` tells whether the flow can take replayed events now.
  constructor(section, flow, page, replayable) {
    Object.assign(this, { section, flow, page, replayable, counts: {}, shown: null });
    this.list = el("div", { id: "dlq-counts" });
    this.letters = el("div", { id: "dlq-letters" });
    this.note = el("p", { id: "dlq-note", role: "status" });
    section.replaceChildren(this.list, this.note, this.letters);
  }

  base() { return `/api/flows/${encodeURIComponent(this.flow)}/dlq`; }

  async refresh() {
    const counts = await getJson(this.base());
    if (!onPage(this.page)) return this.counts;
    this.counts = counts;
    this.render();
    return counts;
  }

  render() {
    const nodes = Object.entries(this.counts).filter(([, n]) => n > 0);
    if (!nodes.length) {
      this.list.replaceChildren(empty("No dead letters: no event has failed (or all were replayed or purged)."));
      return;
    }
    const control = canControl(), ready = this.replayable();
    this.list.replaceChildren(table(["Node", "Dead letters", ""], nodes.map(([node, n]) => [
      cell(node), num(n),
      cell(el("span", {},
        el("button", { type: "button", "data-dlq-show": node, onclick: () => this.show(node) }, "Show"),
        ...(control ? [el("button", { type: "button", "data-dlq-replay": node, disabled: !ready,
                                      title: ready ? "send them back into the node's input"
                                                   : "deploy the flow first",
                                      onclick: () => this.replay(node) }, "Replay")] : [])))]),
      { id: "dlq" }));
  }

  async show(node) {
    say("");
    try {
      const letters = await getJson(`${this.base()}/${encodeURIComponent(node)}?limit=${SHOWN}`);
      if (!onPage(this.page)) return;
      this.shown = node;
      this.letters.replaceChildren(el("h4", {}, `Dead letters of ${node} (oldest first, up to ${SHOWN})`),
        letters.length ? table(["Seq", "Time", "Event id", "Error", "Event"], letters.map((d) => [
          num(d.seq), cell(d.time), cell(d.event_id || "-"), cell(d.error, "error-text"),
          cell(el("code", {}, JSON.stringify(d.event)))]), { id: "dlq-shown" })
          : empty(`No dead letters of ${node} are kept.`));
    } catch (err) { say(`dead letters of ${node}: ${err.message}`); }
  }

  async replay(node) {
    say("");
    try {
      const path = `${this.base()}/${encodeURIComponent(node)}/replay`;
      const done = await (await api(path, { method: "POST" })).json();
      if (!onPage(this.page)) return;
      this.note.textContent = `Replayed ${done.replayed} dead letter(s) of ${node} into ${done.subject}` +
        (done.waiting ? " (the flow is stopped: they wait in its stream until it starts)." : ".");
      await this.refresh();
      if (this.shown === node) await this.show(node);
    } catch (err) { say(`replay of ${node} failed: ${err.message}`); }
  }
}
