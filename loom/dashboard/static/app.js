// The Loom dashboard: draws the state the server pushes (Server-Sent Events, one
// `state` event per poll). Every name on the page comes from the mesh, so text is only
// ever set with textContent, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const KINDS = { 0: "event", 1: "request", 2: "reply", 3: "error" };
const seenPeers = new Set();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function titled(node, text) {
  const title = node instanceof SVGElement ? svg("title", {}, text) : null;
  if (title) node.append(title); else node.title = text;
  return node;
}

function number(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (Math.abs(value) >= 1e4) return (value / 1e3).toFixed(1) + "k";
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

// --- header and cards ---------------------------------------------------------------

function renderHeader(state) {
  const status = document.getElementById("status");
  status.textContent = state.connected ? "connected" : "broker unreachable";
  status.className = "pill " + (state.connected ? "ok" : "down");
  status.dataset.status = state.connected ? "connected" : "down";
  document.getElementById("broker").textContent = state.broker;
  document.getElementById("updated").textContent = "updated " + clock(state.at);
}

function card(name, big, small, bad) {
  const node = el("div", { class: "card" + (bad ? " bad" : ""), "data-card": name });
  node.append(el("h3", {}, name), el("b", {}, big), el("small", {}, small));
  return node;
}

function renderCards(cards) {
  const rate = (c) => `${number(c.rate)}/s · ${number(c.total)} total`;
  const latency = cards.latency;
  const peers = cards.peers;
  const p = (v) => (v === null ? "–" : v.toFixed(v < 10 ? 2 : 0) + " ms");
  document.getElementById("cards").replaceChildren(
    card("Published", number(cards.published.rate) + "/s", rate(cards.published)),
    card("Forwarded", number(cards.forwarded.rate) + "/s", rate(cards.forwarded)),
    card("Delivered", number(cards.handled.rate) + "/s", `${number(cards.handled.total)} handled by actors`),
    card("Dropped", number(cards.dropped.total), `${number(cards.dropped.rate)}/s`, cards.dropped.total > 0),
    card("Tool calls", number(cards.calls.rate) + "/s",
      `${number(cards.calls.total)} total · ${number(cards.failures.total)} failed`,
      cards.failures.rate > 0),
    card("Latency p50", p(latency.p50_ms), `p99 ${p(latency.p99_ms)} · ${latency.samples} calls`),
    card("Peers", String(peers.actors + peers.workers + peers.clients),
      `${peers.actors} actors · ${peers.workers} workers · ${peers.tools} tools`),
  );
}

// --- topology -----------------------------------------------------------------------

const NODE_W = 190, NODE_H = 30, GAP = 8, TOP = 28;
const COLUMNS = [["peer", "actors & clients"], ["topic", "topics"], ["tool", "tools"], ["worker", "workers"]];

function renderTopology(topo) {
  const host = document.getElementById("topology");
  const columns = {
    peer: topo.peers.map((p) => ({ ...p, label: p.name, sub: peerSub(p) })),
    topic: topo.topics.map((t) => ({ ...t, label: t.name, sub: `${number(t.rate)}/s · ${number(t.published)}` })),
    tool: topo.tools.map((t) => ({ ...t, label: t.name, sub: `${t.calls} calls · ${t.errors} err · ${t.in_flight}/${t.capacity} busy` })),
    worker: topo.workers.map((w) => ({ ...w, label: w.name, sub: `pid ${w.pid ?? "?"} · ${w.in_flight} running${w.draining ? " · draining" : ""}` })),
  };
  if (topo.more_topics > 0) {
    columns.topic.push({ id: "topic:…", label: `+${topo.more_topics} quieter topics`, sub: "" });
  }
  const rows = Math.max(1, ...Object.values(columns).map((c) => c.length));
  const width = 1000, height = TOP + rows * (NODE_H + GAP);
  const xs = { peer: 10, topic: 270, tool: 530, worker: 790 };
  const where = {};
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, "data-testid": "topology" });
  const edges = svg("g"), nodes = svg("g");
  root.append(edges, nodes);
  for (const [kind, heading] of COLUMNS) {
    nodes.append(svg("text", { x: xs[kind], y: 14, class: "col" }, heading));
    columns[kind].forEach((item, i) => {
      const x = xs[kind], y = TOP + i * (NODE_H + GAP);
      where[item.id] = { x, y };
      const fresh = kind === "peer" && item.live && !seenPeers.has(item.id) && seenPeers.size > 0;
      const g = svg("g", {
        class: `node ${kind}${item.live === false ? " gone" : ""}${fresh ? " fresh" : ""}`,
        "data-node": item.id,
        transform: `translate(${x},${y})`,
      });
      g.append(svg("rect", { width: NODE_W, height: NODE_H }));
      g.append(svg("text", { x: 8, y: 13 }, clip(item.label, 28)));
      g.append(svg("text", { x: 8, y: 25, class: "sub" }, clip(item.sub || "", 34)));
      const timed = item.handler_ms ? `\nhandler p50 ≤ ${bound(item.handler_ms.p50)}, p99 ≤ ${bound(item.handler_ms.p99)} (sampled)` : "";
      titled(g, `${item.label}\n${item.sub || ""}${item.patterns ? "\nsubscribes: " + item.patterns.join(", ") : ""}${timed}`);
      nodes.append(g);
    });
  }
  for (const p of topo.peers) if (p.live) seenPeers.add(p.id);
  for (const edge of topo.edges) {
    const a = where[edge.from], b = where[edge.to];
    if (!a || !b) continue;
    let x1, y1, x2, y2;
    if (edge.kind === "delivers") { // topic (right column) back to a peer (left column)
      x1 = a.x; y1 = a.y + NODE_H * 0.7; x2 = b.x + NODE_W; y2 = b.y + NODE_H * 0.7;
    } else {
      x1 = a.x + NODE_W; y1 = a.y + NODE_H * 0.35; x2 = b.x; y2 = b.y + NODE_H * 0.35;
    }
    const bend = (x2 - x1) / 2;
    const failing = edge.kind === "calls" && edge.errors > 0;
    const path = svg("path", {
      d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
      class: `edge ${edge.kind}${failing ? " failing" : ""}`,
      "data-edge": `${edge.from}>${edge.to}`,
    });
    if (edge.count !== undefined) {
      path.setAttribute("stroke-width", String(Math.min(6, 1 + Math.log10(1 + edge.count))));
      titled(path, `${edge.from} ${edge.kind} ${edge.to}: ${edge.count}${edge.errors ? `, ${edge.errors} failed` : ""}`);
    }
    edges.append(path);
  }
  host.replaceChildren(root);
}

function peerSub(p) {
  if (!p.live) return "gone";
  const s = p.stats || {};
  if (p.role === "actor") {
    const ms = p.handler_ms ? ` · p50 ≤${bound(p.handler_ms.p50)}` : "";
    return `handled ${number(s.handled ?? 0)} · err ${number(s.errors ?? 0)} · mailbox ${s.mailbox ?? 0}${ms}`;
  }
  return p.role + (p.pid ? ` · pid ${p.pid}` : "");
}

function bound(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return "∞";
  return ms < 1 ? `${Math.round(ms * 1000)}µs` : `${ms}ms`;
}

function clip(text, n) {
  text = String(text);
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// --- swimlanes and the call timeline -------------------------------------------------

function xOf(t, state) {
  const start = state.at - state.window;
  return Math.max(0, Math.min(100, ((t - start) / state.window) * 100));
}

function axis(state) {
  const labels = [0, 0.25, 0.5, 0.75, 1].map((f) => el("span", {}, `-${Math.round(state.window * (1 - f))}s`));
  return el("div", { class: "axis" }, ...labels);
}

function renderThreads(state) {
  // One lane per thread (a trace: a root message and everything handling it caused), its
  // messages and tool calls in the order they happened, with offsets from the root.
  const host = document.getElementById("threads");
  if (!state.threads.length) { host.replaceChildren(el("p", { class: "empty" }, "no threads yet")); return; }
  const grid = el("div", { class: "lanes" });
  for (const lane of state.threads) {
    const label = el("div", { class: "lane-label", "data-trace": lane.trace });
    label.append(el("span", {}, clock(lane.events[0].time)), " ",
      el("small", {}, `${lane.events.length} msg${lane.calls.length ? ` · ${lane.calls.length} calls` : ""} · …${lane.trace.slice(-8)}`));
    titled(label, `trace ${lane.trace}\nloom trace ${lane.trace}`);
    const start = lane.events[0].time;
    const steps = [
      ...lane.events.map((e) => ({ at: e.time, event: e })),
      ...lane.calls.map((c) => ({ at: c.started, call: c })),
    ].sort((a, b) => a.at - b.at);
    const row = el("div", { class: "steps" });
    steps.forEach((step, i) => {
      const offset = i ? el("span", { class: "offset" }, `+${((step.at - start) * 1000).toFixed(1)} ms`) : null;
      if (offset) row.append(offset);
      if (step.event) {
        const e = step.event, kind = KINDS[e.kind] || "event";
        const pill = el("span", { class: `step ${kind}`, "data-topic": e.topic },
          clip(e.topic, 40), el("small", {}, ` ${e.sender}`));
        titled(pill, `${kind} ${e.topic} from ${e.sender} at ${clock(e.time)}`);
        row.append(pill);
      } else {
        const c = step.call, ms = ((c.ended - c.started) * 1000).toFixed(1);
        const pill = el("span", { class: "step call" + (c.outcome === "ok" ? "" : " failed") },
          `⚙ ${clip(c.tool, 30)}`, el("small", {}, ` ${ms} ms ${c.outcome === "ok" ? "" : c.outcome}`));
        titled(pill, `${c.tool} called by ${c.caller} on ${c.worker ?? "no worker"}: ${c.outcome}`);
        row.append(pill);
      }
    });
    grid.append(label, row);
  }
  host.replaceChildren(grid);
}

function callBar(call, state) {
  const bar = el("span", { class: "bar" + (call.outcome === "ok" ? "" : " failed"), "data-call": String(call.seq) });
  const left = xOf(call.started, state);
  bar.style.left = left + "%";
  bar.style.width = Math.max(0, xOf(call.ended, state) - left) + "%";
  const ms = ((call.ended - call.started) * 1000).toFixed(1);
  titled(bar, `${call.tool} from ${call.caller} on ${call.worker ?? "no worker"}: ${call.outcome}, ${ms} ms`);
  return bar;
}

function renderTimeline(state) {
  const host = document.getElementById("timeline");
  const byTool = new Map();
  for (const call of state.calls) {
    if (!byTool.has(call.tool)) byTool.set(call.tool, []);
    byTool.get(call.tool).push(call);
  }
  if (!byTool.size) host.replaceChildren(el("p", { class: "empty" }, "no tool calls in the last minute"));
  else {
    const grid = el("div", { class: "lanes" });
    for (const [tool, calls] of [...byTool].sort()) {
      const failed = calls.filter((c) => c.outcome !== "ok").length;
      grid.append(el("div", { class: "lane-label", "data-tool": tool }, clip(tool, 30), " ",
        el("small", {}, `${calls.length} calls${failed ? ` · ${failed} failed` : ""}`)));
      const track = el("div", { class: "track" });
      for (const call of calls) track.append(callBar(call, state));
      grid.append(track);
    }
    grid.append(el("div"), axis(state));
    host.replaceChildren(grid);
  }
  const recent = [...state.calls].reverse().slice(0, 12);
  const errors = state.errors.filter((e) => !recent.some((c) => c.seq === e.seq && c.ended === e.ended));
  const rows = [...recent, ...errors.reverse().slice(0, 8)].map((call) => {
    const row = el("tr", { class: call.outcome === "ok" ? "" : "failed", "data-call-row": call.tool });
    row.append(el("td", {}, clock(call.ended)), el("td", {}, call.tool), el("td", {}, call.caller),
      el("td", {}, call.worker ?? "–"), el("td", { class: "num" }, ((call.ended - call.started) * 1000).toFixed(1)),
      el("td", {}, call.outcome));
    return row;
  });
  document.querySelector("#calls tbody").replaceChildren(...rows);
}

// --- wiring -------------------------------------------------------------------------

function render(state) {
  renderHeader(state);
  renderCards(state.cards);
  renderTopology(state.topology);
  renderThreads(state);
  renderTimeline(state);
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("state", (message) => {
    try { render(JSON.parse(message.data)); }
    catch (error) { console.error("cannot draw the state", error); }
  });
  source.onerror = () => {
    const status = document.getElementById("status");
    status.textContent = "dashboard unreachable, retrying…";
    status.className = "pill down";
    status.dataset.status = "lost";
  };
}

connect();
