// flowctl console: per node, events/s in and out and lag over the last minutes, drawn
// with uPlot (vendored: uplot.iife.min.js, MIT, see uplot.LICENSE). The samples come
// from /api/flows/NAME/series, then one a second as `event: sample`.
import { el, empty } from "./dom.js";

const COLOURS = { in: "#0969da", out: "#1a7f37", lag: "#bf8700" };

function options(node, width) {
  return {
    title: node, width, height: 150, legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, lag: { range: (u, min, max) => [0, Math.max(1, max)] },
              y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    series: [{},
      { label: "in/s", stroke: COLOURS.in, width: 1.5, points: { show: false } },
      { label: "out/s", stroke: COLOURS.out, width: 1.5, points: { show: false } },
      { label: "lag", stroke: COLOURS.lag, width: 1.5, dash: [4, 3], scale: "lag",
        points: { show: false } }],
    axes: [{}, { size: 44 }, { scale: "lag", side: 1, size: 44, grid: { show: false } }],
  };
}

export class Charts {
  // `section` gets one chart per node (in the graph's order).
  constructor(section, nodes, keepS) {
    this.section = section;
    this.keepS = keepS;
    this.data = {};
    this.plots = {};
    this.note = empty("No samples yet: figures appear here once the flow's replicas report.");
    const grid = el("div", { class: "charts" });
    section.replaceChildren(this.note, grid);
    for (const node of nodes) {
      const box = el("div", { class: "chart", "data-chart": node, "data-points": "0" });
      grid.append(box);
      this.data[node] = [[], [], [], []];
      this.plots[node] = new window.uPlot(options(node, 320), this.data[node], box);
    }
  }

  // Add samples ({t, nodes: {node: figures}}), drop what is older than the window.
  add(samples) {
    if (!samples.length) return;
    this.note.hidden = true;
    for (const [node, data] of Object.entries(this.data)) {
      for (const s of samples) {
        const f = s.nodes[node] || { rate_in: 0, rate_out: 0, lag: 0 };
        data[0].push(s.t); data[1].push(f.rate_in); data[2].push(f.rate_out); data[3].push(f.lag);
      }
      const oldest = data[0][data[0].length - 1] - this.keepS;
      let cut = 0;
      while (cut < data[0].length && data[0][cut] < oldest) cut += 1;
      if (cut) for (const series of data) series.splice(0, cut);
      this.plots[node].setData(data);
      const box = this.section.querySelector(`[data-chart="${CSS.escape(node)}"]`);
      Object.assign(box.dataset, { points: data[0].length, lastT: data[0][data[0].length - 1],
                                   lastIn: data[1][data[1].length - 1] });
    }
  }

  destroy() {
    for (const plot of Object.values(this.plots)) plot.destroy();
  }
}
