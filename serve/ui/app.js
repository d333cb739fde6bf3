// The medkg operator UI: a small hash-routed page over the JSON API.
// Views: #/runs, #/run/ID, #/failures, #/gate, #/dead-letters,
// #/search?q=…&mode=…, #/doc/ID. Everything is built as DOM nodes with
// textContent: no server text is ever parsed as HTML.
"use strict";

const state = { token: localStorage.getItem("medkg.token") || "", timer: null };

// ------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new Error(`${response.status} ${error.code || ""}: ${error.message || response.statusText}`);
  }
  return body;
}

function fmt(n, digits = 0) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? "–" : fmt(seconds * 1000, seconds < 0.01 ? 2 : 1) + " ms";
}

function badge(text) {
  return el("span", { class: "badge " + String(text || "").replace(/[^a-z_-]/gi, "") }, text || "–");
}

function table(columns, rows, attrs) {
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.title)));
  const body = rows.map((row) =>
    el("tr", row.attrs || {}, columns.map((c) => el("td", { class: c.num ? "num" : null }, c.cell(row.data)))),
  );
  return el("table", attrs || {}, el("thead", {}, head), el("tbody", {}, body));
}

function setView(...children) {
  const view = document.getElementById("view");
  view.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

function showError(error) {
  setView(el("p", { class: "error", id: "error" }, String(error.message || error)));
}

function status(text) {
  document.getElementById("status").textContent = text;
}

// An error's class and kind from the engine's `kind (class): message`.
function splitError(text) {
  const m = /^([\w.-]+) \((transient|permanent|unavailable)\): ([\s\S]*)$/.exec(text || "");
  return m ? { kind: m[1], class: m[2], message: m[3] } : { kind: "", class: "", message: text || "" };
}

// ------------------------------------------------------------ runs

function stageTable(stages) {
  return table(
    [
      { title: "Stage", cell: (s) => s.name },
      { title: "Kind", cell: (s) => s.kind },
      { title: "In", num: true, cell: (s) => fmt(s.docs_in) },
      { title: "Out", num: true, cell: (s) => fmt(s.docs_out) },
      { title: "Failed", num: true, cell: (s) => fmt(s.docs_failed) },
      { title: "p50", num: true, cell: (s) => ms(s.p50_seconds) },
      { title: "p95", num: true, cell: (s) => ms(s.p95_seconds) },
      { title: "Retries", num: true, cell: (s) => fmt(s.retries) },
      { title: "Breaker", cell: (s) => (s.breaker ? badge(s.breaker) : "–") },
    ],
    stages.map((s) => ({ data: s, attrs: { "data-stage": s.name } })),
    { id: "stage-table" },
  );
}

function chart(samples) {
  const canvas = el("canvas", { id: "throughput", width: 1000, height: 140 });
  const ctx = canvas.getContext("2d");
  const rates = samples.map((s) => s.rate);
  const max = Math.max(1, ...rates);
  ctx.strokeStyle = "#2457c5";
  ctx.lineWidth = 2;
  ctx.beginPath();
  rates.forEach((r, i) => {
    const x = rates.length > 1 ? (i / (rates.length - 1)) * 980 + 10 : 10;
    const y = 130 - (r / max) * 115;
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#6b7380";
  ctx.font = "12px system-ui";
  ctx.fillText(`docs/s (peak ${fmt(max, 1)})`, 12, 14);
  return canvas;
}

function runCards(run) {
  const card = (value, label) => el("div", { class: "card" }, el("b", {}, value), el("span", {}, label));
  return el(
    "div",
    { class: "cards", id: "run-cards" },
    card(badge(run.status), "status"),
    card(fmt(run.records), "records read"),
    card(fmt(run.docs), "documents durable"),
    card(fmt(run.failed), "failed"),
    card(fmt(run.docs_per_second, 1), "docs/s"),
    card(fmt(run.gate_pending), "at the gate"),
    card(fmt(run.consumer_lag), "Kafka lag"),
  );
}

// Docs/s between the run's recorded points ([ms, docs], one a second or coarser).
function rates(history) {
  const out = [];
  for (let i = 1; i < history.length; i++) {
    const [t0, d0] = history[i - 1];
    const [t1, d1] = history[i];
    out.push({ rate: Math.max(0, ((d1 - d0) * 1000) / Math.max(1, t1 - t0)) });
  }
  return out;
}

function runDetail(run) {
  return [
    el("h1", {}, "Run ", el("code", {}, run.run_id)),
    el("p", { class: "muted" }, `${run.pipeline} · ${run.source} · tenant ${run.tenant_id} · started ${run.started_at}` +
      (run.finished_at ? ` · finished ${run.finished_at}` : "") + ` · ${run.processes} process(es)`),
    run.error ? el("p", { class: "error" }, run.error) : null,
    runCards(run),
    chart(rates(run.history || [])),
    el("h2", {}, "Stages"),
    stageTable(run.stages),
  ];
}

async function viewRuns() {
  const { runs } = await api("/v1/runs?limit=20");
  if (runs.length === 0) return setView(el("h1", {}, "Runs"), el("p", { class: "muted" }, "No run has recorded itself in this data directory yet."));
  const latest = runs[0];
  const list = table(
    [
      { title: "Run", cell: (r) => el("a", { href: "#/run/" + encodeURIComponent(r.run_id) }, r.run_id.slice(0, 8)) },
      { title: "Status", cell: (r) => badge(r.status) },
      { title: "Pipeline", cell: (r) => r.pipeline },
      { title: "Source", cell: (r) => r.source },
      { title: "Docs", num: true, cell: (r) => fmt(r.docs) },
      { title: "Failed", num: true, cell: (r) => fmt(r.failed) },
      { title: "Docs/s", num: true, cell: (r) => fmt(r.docs_per_second, 1) },
      { title: "Started", cell: (r) => r.started_at },
    ],
    runs.map((r) => ({ data: r, attrs: { "data-run": r.run_id } })),
    { id: "runs-table" },
  );
  setView(...runDetail(latest), el("h2", {}, "All runs"), list);
}

async function viewRun(id) {
  setView(...runDetail(await api("/v1/runs/" + encodeURIComponent(id))));
}

// ------------------------------------------------------------ failures, gate, dead letters

async function viewFailures() {
  const { rows, counts } = await api("/v1/ledger?status=failed&limit=200");
  const summary = Object.entries(counts).map(([s, n]) => `${s} ${fmt(n)}`).join(" · ");
  setView(
    el("h1", {}, "Failures"),
    el("p", { class: "muted" }, "Documents: " + (summary || "none")),
    rows.length === 0
      ? el("p", { class: "muted", id: "no-failures" }, "No failed documents.")
      : table(
          [
            { title: "Document", cell: (r) => el("a", { href: "#/doc/" + encodeURIComponent(r.doc_id) }, r.doc_id) },
            { title: "Tenant", cell: (r) => r.tenant_id },
            { title: "Stage", cell: (r) => r.stage },
            { title: "Class", cell: (r) => badge(splitError(r.last_error).class) },
            { title: "Error", cell: (r) => { const e = splitError(r.last_error); return el("span", {}, el("b", {}, e.kind), " ", e.message); } },
            { title: "Retries", cell: (r) => Object.entries(r.retries).map(([s, n]) => `${s} ×${n}`).join(", ") || "–" },
            { title: "When", cell: (r) => r.updated_at },
          ],
          rows.map((r) => ({ data: r, attrs: { "data-doc": r.doc_id } })),
          { id: "failures-table" },
        ),
  );
}

async function viewGate() {
  const { gates, waiting } = await api("/v1/gate");
  setView(
    el("h1", {}, "Gate backlog"),
    el("p", { class: "muted" }, `${fmt(waiting)} document(s) waiting.`),
    table(
      [
        { title: "Gate", cell: (g) => g.gate },
        { title: "Waiting for", cell: (g) => (g.side === "pdf" ? "IR (PDF downloaded)" : "PDF (IR ready)") },
        { title: "Documents", num: true, cell: (g) => fmt(g.documents) },
        { title: "Oldest", num: true, cell: (g) => fmt(g.oldest_age_seconds, 1) + " s" },
        { title: "Since", cell: (g) => g.oldest_since },
      ],
      gates.map((g) => ({ data: g })),
      { id: "gate-table" },
    ),
  );
}

async function viewDeadLetters() {
  const { dead_letters } = await api("/v1/dead-letters?limit=200");
  setView(
    el("h1", {}, "Dead letters"),
    table(
      [
        { title: "When", cell: (d) => d.at },
        { title: "Stage", cell: (d) => d.stage },
        { title: "Where", cell: (d) => d.position },
        { title: "Document", cell: (d) => (d.doc_id ? el("a", { href: "#/doc/" + encodeURIComponent(d.doc_id) }, d.doc_id) : "–") },
        { title: "Error", cell: (d) => el("span", {}, badge(d.error_class), " ", el("b", {}, d.error_kind), " ", d.message) },
        { title: "Bytes", cell: (d) => el("pre", {}, d.bytes_preview || "") },
      ],
      dead_letters.map((d) => ({ data: d })),
      { id: "dead-letters-table" },
    ),
  );
}

// ------------------------------------------------------------ documents and search

async function viewDocument(id) {
  const doc = await api("/v1/documents/" + encodeURIComponent(id));
  const j = doc.journey;
  const journey = j
    ? table(
        [
          { title: "Pipeline", cell: () => j.pipeline },
          { title: "Reached", cell: () => j.stage },
          { title: "Status", cell: () => badge(j.status) },
          { title: "Retries", cell: () => Object.entries(j.retries).map(([s, n]) => `${s} ×${n}`).join(", ") || "–" },
          { title: "Last error", cell: () => j.last_error || "–" },
          { title: "First seen", cell: () => j.created_at },
          { title: "Updated", cell: () => j.updated_at },
        ],
        [{ data: j }],
        { id: "journey-table" },
      )
    : el("p", { class: "muted" }, "No ledger row (the run kept no ledger).");
  setView(
    el("h1", {}, doc.title || doc.doc_id),
    el("p", { class: "muted" }, `${doc.doc_id} · tenant ${doc.tenant_id} · ${doc.chunks.length} chunk(s)`),
    el("h2", {}, "Journey"),
    journey,
    el("h2", {}, "Chunks"),
    ...doc.chunks.map((c) => el("div", { class: "hit" }, el("div", { class: "meta" }, `${c.chunk_id} · ${c.section}`), el("div", {}, c.text))),
  );
}

function highlighted(snippet) {
  const chars = Array.from(snippet.text);
  const out = [];
  let at = 0;
  for (const [start, end] of snippet.highlights) {
    if (start < at) continue;
    out.push(chars.slice(at, start).join(""), el("mark", {}, chars.slice(start, end).join("")));
    at = end;
  }
  out.push(chars.slice(at).join(""));
  return out;
}

async function viewSearch(params) {
  const q = params.get("q") || "";
  const mode = params.get("mode") || "hybrid";
  const input = el("input", { type: "search", id: "q", value: q, placeholder: "Search the documents…", "aria-label": "query" });
  const select = el("select", { id: "mode", "aria-label": "mode" }, ["hybrid", "bm25", "splade", "dense"].map((m) => el("option", m === mode ? { value: m, selected: "" } : { value: m }, m)));
  const form = el("form", { class: "search", id: "search-form", onsubmit: (e) => {
    e.preventDefault();
    location.hash = "#/search?" + new URLSearchParams({ q: input.value, mode: select.value });
  } }, input, select, el("button", { type: "submit" }, "Search"));
  if (!q) return setView(el("h1", {}, "Search"), form);
  setView(el("h1", {}, "Search"), form, el("p", { class: "muted" }, "Searching…"));
  const result = await api("/v1/search", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ query: q, mode, k: 20 }) });
  const hits = result.hits.map((h) =>
    el("div", { class: "hit", "data-doc": h.doc_id },
      el("div", { class: "title" }, el("a", { href: "#/doc/" + encodeURIComponent(h.doc_id) }, h.title || h.doc_id)),
      el("div", {}, highlighted(h.snippet)),
      el("div", { class: "meta" }, `#${h.rank} · ${h.chunk_id} · score ${fmt(h.score, 4)} · ranks: bm25 ${h.ranks.bm25 ?? "–"}, splade ${h.ranks.splade ?? "–"}, dense ${h.ranks.dense ?? "–"}`)));
  setView(
    el("h1", {}, "Search"),
    form,
    el("p", { class: "muted", id: "search-summary" }, `${result.hits.length} hit(s) in ${fmt(result.took_ms, 1)} ms (${result.mode})`),
    el("div", { id: "hits" }, hits),
  );
}

// ------------------------------------------------------------ routing

async function route() {
  clearTimeout(state.timer);
  const hash = location.hash.replace(/^#\/?/, "") || "runs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const [view, ...rest] = path.split("/");
  const id = decodeURIComponent(rest.join("/"));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view || (view === "run" && a.dataset.view === "runs")));
  const live = { runs: viewRuns, run: () => viewRun(id), gate: viewGate };
  const once = { failures: viewFailures, "dead-letters": viewDeadLetters, doc: () => viewDocument(id), search: () => viewSearch(params) };
  const render = live[view] || once[view];
  if (!render) return showError(new Error("no such view: " + view));
  try {
    await render();
    status("updated " + new Date().toLocaleTimeString());
    document.body.dataset.ready = view;
  } catch (error) {
    showError(error);
    document.body.dataset.ready = "error";
  }
  // Live views refresh themselves.
  if (live[view]) state.timer = setTimeout(route, 2000);
}

document.getElementById("token").value = state.token;
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = document.getElementById("token").value.trim();
  localStorage.setItem("medkg.token", state.token);
  route();
});
window.addEventListener("hashchange", route);
route();
