// The dashboard page: polls /api/snapshot every second and draws the graph and the processes;
// the other tabs load when opened. Text from the deployment only ever goes in as textContent.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BAD = new Set(["down", "paused", "unresponsive"]);
let snapshot = null;
let eventSeq = 0;
let tab = "overview";

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

const fmt = {
  bytes: (n) => (n == null ? "-" : n > 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : (n / 1024).toFixed(0) + " KiB"),
  secs: (s) => (s == null ? "-" : s < 120 ? s.toFixed(0) + "s" : s < 7200 ? (s / 60).toFixed(0) + "m" : (s / 3600).toFixed(1) + "h"),
  ms: (v) => (v == null ? "-" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(0) + " ms"),
};

function healthClass(health) {
  return BAD.has(health) ? "bad" : health === "ready" ? "ready" : "starting";
}

// -- the graph -------------------------------------------------------------------------------

function layout(snap) {
  const services = snap.services.map((s) => s.name);
  const calls = snap.calls.filter((c) => services.includes(c.caller) && services.includes(c.service));
  const depth = Object.fromEntries(services.map((s) => [s, 0]));
  for (let round = 0; round < services.length; round++) {
    for (const c of calls) if (c.caller !== c.service) depth[c.service] = Math.max(depth[c.service], depth[c.caller] + 1);
  }
  const columns = [];
  for (const s of services) (columns[depth[s]] ||= []).push(s);
  const topics = snap.events.map((e) => e.topic);
  if (topics.length) columns.push(topics.map((t) => "topic:" + t));
  const colWidth = 260, rowHeight = 74;
  const tallest = Math.max(...columns.map((c) => c.length));
  const pos = {};
  const place = (column, x) => column.forEach((name, y) => {
    // Each column centred, so a lone edge service sits level with what it calls.
    pos[name] = { x: 20 + x * colWidth, y: 16 + (y + (tallest - column.length) / 2) * rowHeight };
  });
  columns.forEach((column, x) => {
    if (x > 0) {  // order a column by where its callers are: fewer crossings
      const callersY = (name) => {
        const ys = calls.filter((c) => c.service === name && pos[c.caller]).map((c) => pos[c.caller].y);
        const e = snap.events.find((ev) => "topic:" + ev.topic === name);
        if (e) ys.push(...e.emitters.filter((m) => pos[m]).map((m) => pos[m].y));
        return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : 0;
      };
      column.sort((a, b) => callersY(a) - callersY(b));
    }
    place(column, x);
  });
  return { pos, width: 40 + columns.length * colWidth - 80, height: 32 + tallest * rowHeight };
}

function edgePath(a, b, w, h) {
  const y1 = a.y + h / 2, y2 = b.y + h / 2;
  if (b.x > a.x + w) {  // forward: right side to left side
    const mid = (a.x + w + b.x) / 2;
    return `M${a.x + w},${y1} C${mid},${y1} ${mid},${y2} ${b.x},${y2}`;
  }
  if (b.x + w < a.x) {  // backward (a topic to a handler on its left): left side to right side
    const mid = (a.x + b.x + w) / 2;
    return `M${a.x},${y1} C${mid},${y1} ${mid},${y2} ${b.x + w},${y2}`;
  }
  const out = a.x + w + 40;  // same column: around the right
  return `M${a.x + w},${y1} C${out},${y1} ${out},${y2} ${b.x + w},${y2}`;
}

function drawGraph(snap) {
  const svg = document.getElementById("graph");
  const { pos, width, height } = layout(snap);
  const W = 160, H = 48;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.replaceChildren(el("svg:defs", {},
    el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto" },
      el("svg:path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))));
  const edges = el("svg:g", { class: "edges" });
  const labelled = [];
  const labels = el("svg:g", { class: "labels" });
  svg.append(edges, labels);
  for (const c of snap.calls) {
    const a = pos[c.caller], b = pos[c.service];
    if (!a || !b) continue;
    const active = c.rate > 0;
    const kind = c.local ? "local" : "call";
    const d = edgePath(a, b, W, H);
    edges.append(el("svg:path", {
      d, class: `edge ${kind}${active ? " active" : ""}${c.error_rate > 0 ? " errors" : ""}`,
      "data-edge": `${c.caller}->${c.service}`, "data-rate": c.rate, "marker-end": "url(#arrow)",
    }, el("svg:title", { text: `${c.caller} → ${c.service}` })));
    const stats = `${c.rate}/s · p99 ${fmt.ms(c.p99_ms)}` + (c.error_rate > 0 ? ` · ${(c.error_rate * 100).toFixed(1)}% err` : "");
    edges.lastChild.firstChild.textContent += c.local ? " (local call)" : ` ${stats} · p50 ${fmt.ms(c.p50_ms)}`;
    if (active) labelled.push([edges.lastChild, stats]);
  }
  for (const e of snap.events) {
    const t = pos["topic:" + e.topic];
    for (const emitter of e.emitters) {
      if (!pos[emitter]) continue;
      edges.append(el("svg:path", {
        d: edgePath(pos[emitter], t, W, H), class: `edge event${e.rate > 0 ? " active" : ""}`,
        "data-edge": `${emitter}->${e.topic}`, "data-rate": e.rate, "marker-end": "url(#arrow)",
      }));
    }
    for (const handler of e.handlers) {
      if (!pos[handler]) continue;
      const dead = e.dead[handler] > 0;
      edges.append(el("svg:path", {
        d: edgePath(t, pos[handler], W, H), class: `edge event${e.handled[handler] > 0 ? " active" : ""}${dead ? " errors" : ""}`,
        "data-edge": `${e.topic}->${handler}`, "data-rate": e.handled[handler], "marker-end": "url(#arrow)",
      }));
    }
  }
  for (const [path, text] of labelled) {  // near the callee, where fanned-out edges are apart
    const at = path.getPointAtLength(path.getTotalLength() * 0.72);
    labels.append(el("svg:text", { x: at.x, y: at.y - 3, class: "edge-label", text }));
  }
  const byService = {};
  for (const p of snap.processes) for (const s of p.services) (byService[s] ||= []).push(p);
  for (const s of snap.services) {
    const p = pos[s.name];
    // A service reached by URL has no process here: its addresses, as the supervisor saw them.
    const external = Object.entries(s.external || {}).map(([url, health]) => ({ label: url, health }));
    const replicas = external.length ? external : byService[s.name] || [];
    const worst = replicas.some((r) => BAD.has(r.health)) ? "bad" : replicas.every((r) => r.health === "ready") ? "ready" : "starting";
    const where = external.length ? "external" : replicas.length === 1 ? replicas[0].label : `${replicas.length} replicas`;
    svg.append(el("svg:g", { class: `node ${worst}`, "data-service": s.name, "data-health": worst, transform: `translate(${p.x},${p.y})` },
      el("svg:rect", { width: W, height: H, rx: 8 }),
      el("svg:circle", { cx: W - 12, cy: 12, r: 5, class: "dot" }),
      el("svg:text", { x: 10, y: 20, class: "name", text: s.name }),
      el("svg:text", { x: 10, y: 38, class: "sub", text: `${where}${s.pages ? " (web)" : ""} · ${replicas.map((r) => r.health).join(", ")}` }),
      el("svg:title", { text: `${s.name}: ${s.methods.length} methods; depends on ${s.depends_on.join(", ") || "nothing"}` })));
  }
  for (const e of snap.events) {
    const p = pos["topic:" + e.topic];
    const dead = Object.values(e.dead).reduce((x, y) => x + y, 0);
    svg.append(el("svg:g", { class: "topic", "data-topic": e.topic, transform: `translate(${p.x},${p.y})` },
      el("svg:rect", { width: W, height: H, rx: 24 }),
      el("svg:text", { x: 14, y: 20, class: "name", text: e.topic }),
      el("svg:text", { x: 14, y: 38, class: "sub", text: `${e.rate}/s${dead > 0 ? ` · ${dead}/s dead` : ""}` })));
  }
}

// -- processes -------------------------------------------------------------------------------

function drawProcesses(snap) {
  document.getElementById("controls-head").hidden = !snap.controls;
  const rows = snap.processes.map((p) => el("tr", { "data-process": p.label, class: healthClass(p.health) },
    el("td", { text: p.label }),
    el("td", { text: p.services.join(", ") }),
    el("td", { class: "health", text: p.health }),
    el("td", { text: p.pid ?? "-" }),
    el("td", { text: p.cpu_percent == null ? "-" : p.cpu_percent + " %" }),
    el("td", { text: fmt.bytes(p.rss_bytes) }),
    el("td", { text: fmt.secs(p.uptime) }),
    el("td", { class: "restarts", text: p.restarts }),
    el("td", { text: (p.version || "-").slice(0, 7) }),
    snap.controls ? el("td", { class: "controls" }, ...["pause", "resume", "stop"].map((action) =>
      el("button", { class: action, text: action, onclick: () => control(p.label, action) }))) : null));
  document.querySelector("#processes tbody").replaceChildren(...rows);
}

async function control(process, action) {
  try {
    await api("/api/control", { process, action });
    await poll();
  } catch (err) {
    alert(`${action} ${process}: ${err.message}`);
  }
}

// -- events ----------------------------------------------------------------------------------

async function loadEvents() {
  const data = await api(`/api/events?since=${eventSeq}`);
  document.getElementById("feed-note").textContent = data.note || "the last 200 events of the deployment, newest first";
  const body = document.querySelector("#event-list tbody");
  for (const item of data.items) {
    eventSeq = Math.max(eventSeq, item.seq);
    body.prepend(el("tr", { class: item.dead ? "dead" : "" },
      el("td", { text: (item.time || "").slice(11, 23) }), el("td", { text: item.topic }),
      el("td", { text: item.type }), el("td", { class: "mono", text: item.id }),
      el("td", { text: item.source }), el("td", { text: item.size + " B" }),
      el("td", { text: item.dead ? `${item.handler}: ${item.reason}` : "" })));
  }
  while (body.children.length > 200) body.lastChild.remove();
}

// -- traces ----------------------------------------------------------------------------------

async function loadTraces() {
  const list = document.getElementById("trace-list");
  const data = await api("/api/traces");
  if (!data.traces.length) {
    list.replaceChildren(el("li", { class: "muted", text: data.available ? "no traces yet" : "no traces yet: the processes do not serve /traces" }));
    return;
  }
  list.replaceChildren(...data.traces.map((t) => el("li", { class: t.error ? "error" : "" },
    el("a", { href: "#", "data-trace": t.trace_id, onclick: (ev) => { ev.preventDefault(); showTrace(t.trace_id); } ,
      text: `${t.service} ${t.name} · ${fmt.ms(t.duration_ms)} · ${t.spans} spans · ${t.processes.length} processes` }))));
}

async function showTrace(traceId) {
  select("traces");
  const box = document.getElementById("waterfall");
  let trace;
  try {
    trace = await api(`/api/traces/${traceId}`);
  } catch (err) {
    box.replaceChildren(el("p", { class: "muted", text: `trace ${traceId}: ${err.message}` }));
    return;
  }
  const total = Math.max(trace.duration_ms, 0.001);
  box.replaceChildren(el("h3", { text: `trace ${trace.trace_id} · ${fmt.ms(trace.duration_ms)}` }),
    ...trace.span_list.map((s) => el("div", { class: `span ${s.status === "error" ? "error" : ""}` },
      el("span", { class: "who", text: `${s.process} · ${s.service}` }),
      el("span", { class: "track" }, el("span", {
        class: `bar ${s.hop || "internal"}`,
        style: { left: `${(100 * s.offset_ms) / total}%`, width: `${Math.max(0.5, (100 * s.duration_ms) / total)}%` },
      })),
      el("span", { class: "what", text: `${s.hop ? s.hop.toUpperCase() + " " + s.kind + " · " : ""}${s.name} · ${fmt.ms(s.duration_ms)}` }))));
}

// -- catalog ---------------------------------------------------------------------------------

async function loadCatalog() {
  const box = document.getElementById("services");
  if (box.dataset.loaded) return;
  const data = await api("/api/catalog");
  box.dataset.loaded = "yes";
  box.replaceChildren(...data.services.map((s) => el("details", { class: "service", "data-service": s.name },
    el("summary", { text: `${s.name} (${s.process}) · ${s.methods.length} methods · ${s.events.length} event operations` }),
    s.documents === "declared" ? el("p", { class: "muted declared", text: "as the app declares it: this process serves no /openapi.json (another language)" }) : null,
    ...s.methods.map((m) => methodForm(s.name, m)),
    s.events.length ? el("ul", { class: "events" }, ...s.events.map((e) => el("li", { text: `${e.action} ${e.channel}: ${e.summary}` }))) : null)));
}

function methodForm(service, m) {
  const input = el("textarea", { rows: 4, class: "mono" });
  input.value = JSON.stringify(m.example ?? {}, null, 2);
  const result = el("pre", { class: "result" });
  const send = async () => {
    let body;
    try { body = JSON.parse(input.value); } catch (err) { result.textContent = `not JSON: ${err.message}`; return; }
    result.textContent = "calling…";
    try {
      const answer = await api("/api/call", { service, method: m.name, body });
      result.replaceChildren(el("div", {},
        `${answer.status} in ${fmt.ms(answer.duration_ms)} · trace `,
        el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); showTrace(answer.trace_id); }, text: answer.trace_id })),
        JSON.stringify(answer.answer, null, 2));
    } catch (err) { result.textContent = err.message; }
  };
  return el("div", { class: "method", "data-method": `${service}.${m.name}` },
    el("h4", { text: `${m.name}${m.idempotent ? " (idempotent)" : ""}` }),
    el("p", { class: "muted", text: m.summary }),
    el("div", { class: "schemas" },
      el("pre", { text: "request " + JSON.stringify(m.request, null, 2) }),
      el("pre", { text: "response " + JSON.stringify(m.response, null, 2) })),
    input, el("button", { class: "call", text: "Call", onclick: send }), result);
}

// -- the loop --------------------------------------------------------------------------------

function select(name) {
  tab = name;
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== name;
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.tab === name);
  if (name === "traces") loadTraces().catch(() => {});
  if (name === "catalog") loadCatalog().catch((err) => { document.getElementById("services").textContent = err.message; });
}

async function poll() {
  try {
    snapshot = await api("/api/snapshot");
    document.getElementById("stale").hidden = true;
  } catch (err) {
    document.getElementById("stale").hidden = false;
    return;
  }
  document.getElementById("app").textContent = snapshot.deployment;
  document.getElementById("mode").textContent = `${snapshot.app} as ${snapshot.mode}`;
  const b = snapshot.broker;
  document.getElementById("broker").textContent = b ? `broker ${b.url} (${b.kind}): ${b.health}` : "no broker: events stay in-process";
  const dead = document.getElementById("dead-count");
  dead.hidden = !snapshot.feed.dead_letters;
  dead.textContent = snapshot.feed.dead_letters + " dead";
  drawGraph(snapshot);
  drawProcesses(snapshot);
  document.body.dataset.updated = snapshot.time;
}

for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => select(button.dataset.tab));
document.getElementById("refresh-traces").addEventListener("click", () => loadTraces());
poll();
setInterval(poll, 1000);
setInterval(() => loadEvents().catch(() => {}), 1000);
