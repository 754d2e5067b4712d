// ringhost dashboard: the ring as a circle of members, the particle moving
// live, each member's state, station versions, lap trend, and deploy
// progress while a push travels. Plain JS, no build step, no external URL.
//
// Data (see src/admin/openapi.yaml):
// - GET /v1/ring every second: the ring as the serving node sees it, with
//   what every reachable member reports (liveness, stations, lap p50).
// - GET /v1/events (server-sent events) of every live member whose admin
//   address the page can reach: a node's stream only tells what happens at
//   that node (its visits, its successor going down), so following the
//   particle around the ring takes every member's stream. Other members'
//   streams are other origins; the nodes allow pages served by ring hosts.
//
// Test hooks (keep them stable): tr[data-member][data-state] per member,
// [data-station][data-version] per station on a member's row, #particle
// with data-at (the member it was last seen at), #deploy [data-deploy].
"use strict";

const POLL_MS = 1000;
const SPARK_POINTS = 40; // lap-time samples per member
const MAX_EVENTS = 200; // lines in the event log
const DEPLOY_LINGER_MS = 15000; // a finished push stays shown this long
const RETRY_MAX_MS = 30000; // back-off cap for a member's event stream
const SVG = "http://www.w3.org/2000/svg";
const RADIUS = 120;

const model = {
  self: null, // index of the node serving this page
  size: 0,
  hash: "",
  healthy: null,
  members: new Map(), // index -> member (see member())
  particle: { generation: -1, hop: -1, lap: null, at: null },
  deploys: new Map(), // station -> { version, done, total, doneAt }
  streams: new Map(), // index -> EventSource
  lastPollError: null,
};

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function member(index) {
  let m = model.members.get(index);
  if (!m) {
    m = {
      index, name: String(index), addr: "", admin: null, state: "not-started",
      stateAt: 0, // when an event last set `state` (ms); older polls do not override it
      stations: [], stationsAt: 0,
      lapP50: null, faults: 0, pid: null,
      laps: [], // lap times from visit events, ms
      p50s: [], // lap p50 per poll, ms (when no event stream reaches the member)
      streamFails: 0, retryAt: 0,
    };
    model.members.set(index, m);
  }
  return m;
}

function push(list, value, max) {
  list.push(value);
  if (list.length > max) list.shift();
}

function short(hash) {
  return hash ? hash.slice(0, 8) : "?";
}

function versionWord(v) {
  return v === null || v === undefined ? "local" : String(v);
}

// --- the ring-wide view -------------------------------------------------

function applyRing(ring, askedAt) {
  model.self = ring.node;
  model.size = ring.ring_size;
  model.hash = ring.ring_hash || "";
  model.healthy = ring.healthy;
  for (const i of [...model.members.keys()]) if (i >= ring.ring_size) { closeStream(i); model.members.delete(i); }
  for (const r of ring.members || []) {
    const m = member(r.index);
    m.name = r.name;
    m.addr = r.addr;
    if (r.admin) m.admin = r.admin;
    // An event newer than this answer (a member seen down a moment ago)
    // wins over it; the next poll settles it.
    if (m.stateAt <= askedAt) m.state = r.liveness;
    if (r.liveness === "live") {
      if (m.stationsAt <= askedAt) m.stations = (r.stations || []).map((s) => ({ ...s }));
      m.lapP50 = r.lap_p50_ms ?? null;
      m.faults = r.faults ?? 0;
      m.pid = r.pid ?? null;
      if (m.lapP50 !== null) push(m.p50s, m.lapP50, SPARK_POINTS);
    } else {
      forget(m);
    }
  }
  for (const m of model.members.values()) {
    if (m.state === "live") openStream(m);
    else closeStream(m.index);
  }
  render();
}

async function poll() {
  const askedAt = Date.now();
  try {
    const res = await fetch("/v1/ring", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    model.lastPollError = null;
    applyRing(await res.json(), askedAt);
  } catch (e) {
    model.lastPollError = `cannot read /v1/ring: ${e.message}`;
    renderSummary();
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// --- live events --------------------------------------------------------

function logEvent(d, text, warn) {
  const list = document.getElementById("events");
  const at = d && d.at_ms ? new Date(d.at_ms) : new Date();
  const li = el("li", warn ? { class: "warn" } : {}, `${at.toLocaleTimeString()} ${text}`);
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// A member not running: what it ran and its lap times are not known any
// more (an old sparkline would look live).
function forget(m) {
  m.stations = [];
  m.lapP50 = null;
  m.laps = [];
  m.p50s = [];
}

function setState(index, state) {
  const m = member(index);
  m.state = state;
  m.stateAt = Date.now();
  if (state !== "live") {
    // What it ran is not known any more; the next poll agrees.
    closeStream(index);
    forget(m);
  }
}

const handlers = {
  visit(d) {
    const m = member(d.node);
    if (d.lap_time_s !== null && d.lap_time_s !== undefined) {
      push(m.laps, d.lap_time_s * 1000, SPARK_POINTS);
      drawSpark(m);
    }
    // Streams of different members arrive in any order: the particle only
    // moves forward (a newer generation, or a later hop of this one).
    const p = model.particle;
    if (d.generation > p.generation || (d.generation === p.generation && d.hop > p.hop)) {
      Object.assign(p, { generation: d.generation, hop: d.hop, lap: d.lap, at: d.node });
      moveParticle();
      renderSummary();
    }
  },
  member_down(d) {
    const m = member(d.peer);
    const state = d.ever_up || d.left || m.state === "live" ? "dead" : "not-started";
    setState(d.peer, state);
    const what = d.left ? "left" : state === "dead" ? "down" : "not started yet";
    logEvent(d, `node ${d.node}: member ${d.peer} ${what}: ${d.reason}`, state === "dead" && !d.left);
    render();
  },
  member_up(d) {
    setState(d.peer, "live");
    logEvent(d, `node ${d.node}: member ${d.peer} up`);
    render();
  },
  successor_linked(d) {
    if (member(d.successor).state !== "live") {
      setState(d.successor, "live");
      render();
    }
  },
  view_changed(d) {
    if (d.node !== model.self) return;
    const live = new Set(d.live);
    for (const m of model.members.values()) {
      if (live.has(m.index) && m.state !== "live") setState(m.index, "live");
      else if (!live.has(m.index) && m.state === "live") setState(m.index, "dead");
    }
    logEvent(d, `node ${d.node}: live members ${d.live.join(", ")}`);
    render();
  },
  station_swapped(d) {
    const m = member(d.node);
    const s = m.stations.find((s) => s.name === d.station);
    if (s) Object.assign(s, { version: d.version, hash: d.hash });
    else m.stations.push({ name: d.station, version: d.version, hash: d.hash, faults: 0 });
    m.stationsAt = Date.now();
    logEvent(d, `node ${d.node}: ${d.station} v${versionWord(d.version)} (${short(d.hash)}) running`);
    render();
  },
  station_fault(d) { logEvent(d, `node ${d.node}: ${d.station} fault: ${d.cause}`, true); },
  deploy_failed(d) { logEvent(d, `node ${d.node}: deploy of ${d.station} failed: ${d.reason}`, true); },
  deploy_conflict(d) { logEvent(d, `node ${d.node}: ${d.station}: ${d.message}`, true); },
  rolled_back(d) { logEvent(d, `node ${d.node}: ${d.station} rolled back: ${d.cause}`, true); },
  link_refused(d) { logEvent(d, `node ${d.node}: successor refused the link: ${d.reason}`, true); },
  upstream_rejected(d) { logEvent(d, `node ${d.node}: closed a ring connection: ${d.reason}`, true); },
  particle_created(d) {
    logEvent(d, `node ${d.node}: ${d.regenerated ? "regenerated" : "created"} particle ${d.generation}`, d.regenerated);
  },
  particle_dropped(d) { logEvent(d, `node ${d.node}: dropped particle ${d.generation}: ${d.reason}`); },
  lagged(d) { logEvent(null, `(${d.skipped} events of one member skipped: the page read too slowly)`); },
};

// The URL of a member's event stream: this page's own node by path, others
// by their admin address (an unspecified bind address means this host).
function streamUrl(m) {
  if (m.index === model.self) return "/v1/events";
  const unspecified = /^(0\.0\.0\.0|\[::\]):/;
  const host = unspecified.test(m.admin) ? m.admin.replace(unspecified, `${location.hostname}:`) : m.admin;
  return `${location.protocol}//${host}/v1/events`;
}

function openStream(m) {
  if (model.streams.has(m.index) || (!m.admin && m.index !== model.self) || Date.now() < m.retryAt) return;
  const es = new EventSource(streamUrl(m));
  for (const [type, fn] of Object.entries(handlers)) {
    es.addEventListener(type, (e) => {
      try { fn(JSON.parse(e.data)); } catch (err) { console.error(type, err); }
    });
  }
  es.onopen = () => { m.streamFails = 0; };
  // No automatic reconnect: the next poll reopens the stream of a member
  // that is live, with a back-off for one that keeps failing.
  es.onerror = () => {
    es.close();
    if (model.streams.get(m.index) === es) model.streams.delete(m.index);
    m.streamFails += 1;
    m.retryAt = Date.now() + Math.min(RETRY_MAX_MS, 500 * 2 ** m.streamFails);
  };
  model.streams.set(m.index, es);
}

function closeStream(index) {
  const es = model.streams.get(index);
  if (es) { es.close(); model.streams.delete(index); }
}

// --- deploys --------------------------------------------------------------

// Per station: the newest release any live member runs and how many live
// members run it. A push is travelling while some do not; once all do it
// stays shown for DEPLOY_LINGER_MS.
function updateDeploys() {
  const live = [...model.members.values()].filter((m) => m.state === "live");
  const newest = new Map();
  for (const m of live) for (const s of m.stations) {
    const v = s.version ?? 0;
    if (!newest.has(s.name) || v > newest.get(s.name)) newest.set(s.name, v);
  }
  const now = Date.now();
  for (const [name, version] of newest) {
    const done = live.filter((m) => m.stations.some((s) => s.name === name && (s.version ?? 0) === version)).length;
    const was = model.deploys.get(name);
    const d = was && was.version === version ? was : { version, doneAt: null, travelled: false };
    d.done = done;
    d.total = live.length;
    if (done < live.length) { d.travelled = true; d.doneAt = null; }
    else if (d.travelled && d.doneAt === null) d.doneAt = now;
    model.deploys.set(name, d);
  }
  for (const name of [...model.deploys.keys()]) if (!newest.has(name)) model.deploys.delete(name);
}

// --- drawing ------------------------------------------------------------

function position(i, n, r) {
  const a = (2 * Math.PI * i) / Math.max(n, 1) - Math.PI / 2;
  return [r * Math.cos(a), r * Math.sin(a)];
}

function moveParticle() {
  const p = document.getElementById("particle");
  const at = model.particle.at;
  if (!p || at === null || !model.size) return;
  const [x, y] = position(at, model.size, RADIUS);
  p.setAttribute("cx", x.toFixed(1));
  p.setAttribute("cy", y.toFixed(1));
  p.setAttribute("data-at", at);
  p.setAttribute("visibility", "visible");
  p.querySelector("title").textContent = `particle ${model.particle.generation}, hop ${model.particle.hop}, at member ${at}`;
}

function drawRing() {
  const g = document.getElementById("ring-members");
  const n = model.size;
  g.replaceChildren();
  for (const m of sorted()) {
    const [x, y] = position(m.index, n, RADIUS);
    const node = el("svg:g", { class: "member", "data-member": m.index, "data-state": m.state });
    node.append(el("svg:title", {}, `${m.name} ${m.addr}: ${m.state}`));
    node.append(el("svg:circle", { cx: x, cy: y, r: 14 }));
    node.append(el("svg:text", { x, y }, String(m.index)));
    if (m.index === model.self) node.append(el("svg:circle", { class: "self", cx: x, cy: y, r: 18 }));
    const [lx, ly] = position(m.index, n, RADIUS + 30);
    node.append(el("svg:text", { class: "label", x: lx, y: ly }, m.state === "live" ? m.name.replace(/^127\.0\.0\.1/, "") : m.state));
    g.append(node);
  }
}

function sparkline(values) {
  const svg = el("svg:svg", { class: "spark", viewBox: "0 0 100 24", preserveAspectRatio: "none" });
  if (values.length > 1) {
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const span = hi - lo || 1;
    const step = 100 / (SPARK_POINTS - 1);
    const x0 = 100 - (values.length - 1) * step;
    const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(22 - ((v - lo) / span) * 20).toFixed(1)}`);
    svg.append(el("svg:polyline", { points: pts.join(" ") }));
    const title = el("svg:title", {}, `lap time, last ${values.length}: ${lo.toFixed(1)}–${hi.toFixed(1)} ms`);
    svg.append(title);
  }
  return svg;
}

function drawSpark(m) {
  const cell = document.querySelector(`tr[data-member="${m.index}"] td.trend`);
  if (cell) cell.replaceChildren(sparkline(m.laps.length > 1 ? m.laps : m.p50s));
}

// The (version, module) most live members run, per station: members
// running another one are highlighted.
function majority() {
  const counts = new Map();
  for (const m of model.members.values()) {
    if (m.state !== "live") continue;
    for (const s of m.stations) {
      const key = JSON.stringify([s.name, versionWord(s.version), s.hash]);
      counts.set(key, (counts.get(key) || 0) + 1);
    }
  }
  const best = new Map();
  for (const [key, c] of counts) {
    const [name] = JSON.parse(key);
    if (!best.has(name) || best.get(name).c < c) best.set(name, { key, c });
  }
  return best;
}

function sorted() {
  return [...model.members.values()].sort((a, b) => a.index - b.index);
}

function drawTable() {
  const body = document.querySelector("#members tbody");
  const best = majority();
  body.replaceChildren();
  for (const m of sorted()) {
    const tr = el("tr", { "data-member": m.index, "data-state": m.state });
    if (m.index === model.self) tr.classList.add("self");
    tr.append(el("td", {}, String(m.index)), el("td", {}, m.name), el("td", { class: "state" }, m.state));
    const st = el("td", { class: "stations" });
    for (const s of m.stations) {
      const key = JSON.stringify([s.name, versionWord(s.version), s.hash]);
      const odd = best.has(s.name) && best.get(s.name).key !== key;
      const span = el("span", { class: odd ? "station odd" : "station", "data-station": s.name, "data-version": versionWord(s.version) },
        `${s.name} v${versionWord(s.version)}`);
      span.append(el("small", {}, ` ${short(s.hash)}`));
      span.title = `${s.name} version ${versionWord(s.version)}, module ${s.hash || "?"}` + (odd ? " (not what most members run)" : "");
      st.append(span);
    }
    tr.append(st);
    tr.append(el("td", { class: "num" }, m.lapP50 === null ? "–" : `${m.lapP50.toFixed(1)} ms`));
    tr.append(el("td", { class: "trend" }));
    tr.append(el("td", { class: "num" }, m.state === "live" ? String(m.faults) : "–"));
    tr.append(el("td", { class: "admin" }, m.admin || "–"));
    body.append(tr);
    drawSpark(m);
  }
}

function drawDeploy() {
  const box = document.getElementById("deploy");
  box.replaceChildren();
  const now = Date.now();
  for (const [name, d] of model.deploys) {
    const travelling = d.done < d.total;
    if (!travelling && (d.doneAt === null || now - d.doneAt > DEPLOY_LINGER_MS)) continue;
    const div = el("div", { class: travelling ? "progress" : "progress done", "data-deploy": name });
    div.append(el("div", {}, `${name} v${d.version}: ${d.done}/${d.total} live members` + (travelling ? "" : " ✓")));
    const bar = el("div", { class: "bar" });
    bar.append(el("div", { style: `width:${d.total ? (100 * d.done) / d.total : 0}%` }));
    div.append(bar);
    box.append(div);
  }
  if (!box.children.length) box.append(el("div", { class: "quiet" }, "no push travelling"));
}

function renderSummary() {
  const all = [...model.members.values()];
  const count = (s) => all.filter((m) => m.state === s).length;
  const parts = [`${count("live")}/${model.size || all.length} live`];
  if (count("dead")) parts.push(`${count("dead")} dead`);
  if (count("not-started")) parts.push(`${count("not-started")} not started`);
  // The last poll's word, and no member seen down since.
  const healthy = model.healthy === null ? null : model.healthy && count("live") === all.length;
  if (healthy !== null) parts.push(healthy ? "healthy" : "not healthy");
  const p = model.particle;
  if (p.generation >= 0) parts.push(`particle ${p.generation}, lap ${p.lap}, hop ${p.hop}`);
  const summary = document.getElementById("summary");
  summary.textContent = model.lastPollError || parts.join(" · ");
  summary.className = model.lastPollError || healthy === false ? "bad" : "";
  document.getElementById("whoami").textContent =
    model.self === null ? "" : `ring of ${model.size} (hash ${model.hash.slice(0, 12)}), as member ${model.self} sees it`;
}

function render() {
  updateDeploys();
  renderSummary();
  drawRing();
  drawTable();
  drawDeploy();
}

poll();
