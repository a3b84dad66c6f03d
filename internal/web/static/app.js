// vxnet live page: polls /api/overview every second and renders it.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c === undefined || c === null ? "" : c);
  return e;
}

function fill(table, rows) {
  const body = $(table + " tbody");
  body.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => c instanceof Node ? c : el("td", {}, String(c))))));
}

function renderMatrix(all) {
  const names = new Set();
  for (const r of all) { names.add(r.node); for (const p of r.peers || []) names.add(p.node); }
  const cols = [...names].sort();
  const head = el("tr", {}, el("th", {}, "from \\ to"), ...cols.map((c) => el("th", {}, c)));
  const rows = all.map((r) => {
    const view = new Map((r.peers || []).map((p) => [p.node, p]));
    return el("tr", {}, el("th", {}, r.node), ...cols.map((c) => {
      if (c === r.node) return el("td", { class: "cell self" }, "—");
      const p = view.get(c);
      const state = p ? p.state : "unknown";
      const title = p ? `${r.node} → ${c}: ${state}, rtt ${p.rtt_ms.toFixed(2)} ms, loss ${(100 * p.loss).toFixed(0)}%` + (p.cause ? `\n${p.cause}` : "") : "no probe yet";
      return el("td", { class: "cell " + state, "data-from": r.node, "data-to": c, title }, state);
    }));
  });
  $("#matrix").replaceChildren(el("table", { id: "health-grid" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function render(o) {
  const s = o.status, h = o.health;
  $("#node").textContent = `node ${s.node} (${s.addr}) · vxnet ${s.version}`;
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
  const versions = new Map((s.nodes || []).map((n) => [n.name, n.version]));
  const paths = new Map((s.paths || []).map((p) => [p.peer, p]));
  fill("#hosts", (s.members || []).map((m) => {
    const p = paths.get(m.name);
    const via = p ? el("td", { title: p.reason }, p.addr) : el("td", {}, m.name === s.node ? "this host" : m.addr);
    return [m.name, m.addr, via, el("td", { class: "state-" + m.state }, m.state), versions.get(m.name) || "?"];
  }));
  fill("#networks", (s.networks || []).map((n) => [n.dockerName ? `${n.dockerName} (${n.name})` : n.name, n.vni, n.subnet, n.local, n.remote, n.encrypted ? "WireGuard (encrypted)" : "VXLAN"]));
  fill("#endpoints", (o.endpoints || []).map((e) =>
    [e.name || "-", e.network, e.host, [e.ip, e.ip6].filter(Boolean).join(", "), (e.ports || []).join(", ") || "-", e.from, e.mac]));
  renderMatrix(h.all && h.all.length ? h.all : [h]);
  const events = (h.events || []).slice().reverse().map((e) =>
    el("li", {}, el("time", {}, new Date(e.at).toLocaleTimeString()), `${s.node} → ${e.peer}: ${e.from} → ${e.to}` + (e.cause ? ` (${e.cause})` : "")));
  $("#events").replaceChildren(...(events.length ? events : [el("li", {}, "no change since the agent started")]));
  $("#conflicts").replaceChildren(...(s.conflicts || []).map((c) => el("p", { class: "error" }, "conflict: " + c)));
}

async function tick() {
  try {
    const r = await fetch("api/overview", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status + " " + r.statusText);
    render(await r.json());
  } catch (err) {
    $("#updated").textContent = "cannot reach the agent: " + err.message;
  }
}

tick();
setInterval(tick, 1000);
