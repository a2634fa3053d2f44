// qcstation station screen: plain ES2020, no framework, no build step, no network beyond this station.
//
// Reads /api/v1 with fetch and follows /api/v1/stream (server-sent events). The stream is read with
// fetch() rather than EventSource because EventSource cannot send the Authorization header, which the
// station requires once any API token exists. Every write (release, review) sends the token typed into its
// dialog, never the screen's own token, so an operator's screen cannot release or override.
"use strict";

const API = "/api/v1";
const TREND_PARTS = 200;
const $ = (id) => document.getElementById(id);

const state = {
  token: localStorage.getItem("qcs.token") || "",
  role: null,
  status: null,
  job: null,
  hold: null,
  trend: [], // oldest -> newest: {id, verdict}
  rejects: [], // newest first
  latestId: null,
  frameSize: null, // [w, h] of the last image seen, for drawing regions without an image
  live: false,
  detailId: null,
  detail: null,
};

// -- helpers -----------------------------------------------------------------------------------------------

function authHeaders(token) {
  const t = token === undefined ? state.token : token;
  return t ? { Authorization: "Bearer " + t } : {};
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Accept: "application/json" }, authHeaders(opts.token), opts.headers || {});
  const init = { method: opts.method || "GET", headers, cache: "no-store" };
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.json);
  }
  const r = await fetch(API + path, init);
  let body = null;
  try { body = await r.json(); } catch (_e) { body = null; }
  if (!r.ok) {
    if (r.status === 401 && opts.token === undefined) askLogin(body && body.detail);
    throw new ApiError(r.status, body);
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function setText(id, text) { $(id).textContent = text; }
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
const hhmmss = (iso) => (iso ? iso.slice(11, 19) : "");
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");

function debounce(fn, ms) {
  let t = null;
  return () => { clearTimeout(t); t = setTimeout(fn, ms); };
}

function isFail(verdict) {
  const lim = state.status && state.status.control_limits;
  const reviewCounts = lim ? lim.review_counts_as_fail : true;
  return verdict === "FAIL" || (reviewCounts && verdict === "REVIEW");
}

// -- verdict tile and latest image --------------------------------------------------------------------------

function showVerdict(r) {
  const tile = $("verdict");
  // A part that passed inside a held batch must not look like "ship it": it is quarantined with the batch.
  const held = r.disposition === "HOLD";
  tile.className = "tile v-" + (held ? "HELD" : r.result_state) + (state.live ? "" : " stale");
  setText("v-word", held ? "HOLD" : r.result_state);
  setText("v-serial", r.part_id ? r.part_id : r.measurement_id || "");
  const reasons = r.reasons && r.reasons.length ? r.reasons.join(" · ") : r.error || "";
  setText("v-reasons", reasons);
  const hold = held ? " · " + r.result_state + " part, quarantined with its batch" : "";
  setText("v-time", hhmmss(r.creation_time) + " UTC · " + (r.job_id || "") + hold);
}

let imageBusy = false;
let imagePending = null;

async function showImage(r) {
  if (imageBusy) { imagePending = r; return; }
  imageBusy = true;
  try {
    await paintPart(r, $("part-img"), $("part-canvas"), $("img-note"));
  } finally {
    imageBusy = false;
    if (imagePending) { const next = imagePending; imagePending = null; showImage(next); }
  }
}

const objectUrls = new WeakMap();

async function paintPart(r, img, canvas, note) {
  // The overlay when the image was kept; the regions over a neutral frame otherwise.
  try {
    const resp = await fetch(API + "/inspections/" + r.result_id + "/overlay", { headers: authHeaders(), cache: "no-store" });
    if (resp.ok) {
      const blob = await resp.blob();
      const old = objectUrls.get(img);
      const url = URL.createObjectURL(blob);
      objectUrls.set(img, url);
      await new Promise((res) => { img.onload = res; img.onerror = res; img.src = url; });
      if (old) URL.revokeObjectURL(old);
      if (img.naturalWidth) state.frameSize = [img.naturalWidth, img.naturalHeight];
      img.hidden = false;
      canvas.hidden = true;
      note.textContent = "";
      return;
    }
  } catch (_e) { /* fall through to the drawing */ }
  drawRegions(canvas, r.regions || [], r.result_state);
  img.hidden = true;
  canvas.hidden = false;
  note.textContent = "(image not kept: regions only)";
}

const VERDICT_COLOR = { PASS: "#15803d", FAIL: "#dc2626", REVIEW: "#f59e0b", ERROR: "#7e22ce" };

function drawRegions(canvas, regions, verdict) {
  let [w, h] = state.frameSize || [0, 0];
  for (const g of regions) {
    w = Math.max(w, g.bbox[0] + g.bbox[2]);
    h = Math.max(h, g.bbox[1] + g.bbox[3]);
  }
  if (!w || !h) { w = 256; h = 256; }
  const scale = Math.min(512 / w, 512 / h);
  canvas.width = Math.round(w * scale);
  canvas.height = Math.round(h * scale);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#3a4048";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#5b636e";
  ctx.setLineDash([6, 6]);
  ctx.strokeRect(1, 1, canvas.width - 2, canvas.height - 2);
  ctx.setLineDash([]);
  ctx.lineWidth = 3;
  ctx.font = "bold 16px sans-serif";
  for (const g of regions) {
    const [x, y, bw, bh] = g.bbox.map((v) => v * scale);
    ctx.strokeStyle = "#ff3b3b";
    ctx.strokeRect(x, y, Math.max(bw, 2), Math.max(bh, 2));
    const label = g.class_name + " " + (g.score * 100).toFixed(0) + "%";
    ctx.fillStyle = "rgba(0,0,0,0.7)";
    ctx.fillRect(x, Math.max(0, y - 20), ctx.measureText(label).width + 8, 20);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 4, Math.max(15, y - 5));
  }
  if (!regions.length) {
    ctx.fillStyle = VERDICT_COLOR[verdict] || "#ccc";
    ctx.font = "bold 28px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(verdict || "", canvas.width / 2, canvas.height / 2);
    ctx.textAlign = "start";
  }
}

// -- counters and trend ---------------------------------------------------------------------------------------

async function refreshSummary() {
  if (!state.job) return;
  try {
    const s = await api("/batches/" + encodeURIComponent(state.job));
    const v = s.verdicts || {};
    setText("c-parts", s.total);
    setText("c-pass", v.PASS || 0);
    setText("c-fail", v.FAIL || 0);
    setText("c-review", v.REVIEW || 0);
    setText("c-error", v.ERROR || 0);
    setText("c-yield", pct(s.yield));
    setText("c-batch", s.batch.job_id);
    setBatchState(s.batch.state);
  } catch (_e) { /* shown by the health panel */ }
}
const refreshSummarySoon = debounce(refreshSummary, 500);

function bumpCounters(verdict) {
  // Count the part at once; the batch summary fetched right after is the truth.
  const ids = { PASS: "c-pass", FAIL: "c-fail", REVIEW: "c-review", ERROR: "c-error" };
  const num = (id) => parseInt($(id).textContent, 10) || 0;
  if (ids[verdict]) setText(ids[verdict], String(num(ids[verdict]) + 1));
  const parts = num("c-parts") + 1;
  setText("c-parts", String(parts));
  setText("c-yield", pct(num("c-pass") / parts));
}

function trendWindow() {
  const lim = state.status && state.status.control_limits;
  if (lim && lim.p_chart) return lim.p_chart.subgroup;
  if (lim && lim.fail_rate) return lim.fail_rate.window;
  return 20;
}

function drawTrend() {
  const canvas = $("trend");
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(200, Math.round(rect.width * dpr));
  canvas.height = Math.max(80, Math.round(rect.height * dpr));
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 34 * dpr;
  ctx.clearRect(0, 0, W, H);
  const n = trendWindow();
  const fails = state.trend.map((p) => (isFail(p.verdict) ? 1 : 0));
  const series = [];
  let sum = 0;
  for (let i = 0; i < fails.length; i++) {
    sum += fails[i];
    if (i >= n) sum -= fails[i - n];
    if (i >= n - 1 || fails.length < n) series.push(sum / Math.min(i + 1, n));
  }
  const lim = (state.status && state.status.control_limits) || {};
  const ucl = lim.p_chart ? lim.p_chart.ucl : null;
  const center = lim.p_chart ? lim.p_chart.baseline_rate : null;
  const maxRate = lim.fail_rate ? lim.fail_rate.max_rate : null;
  const top = Math.min(1, Math.max(0.2, (ucl || 0) * 1.4, (maxRate || 0) * 1.2, ...series.map((x) => x * 1.15)));
  const y = (v) => H - pad * 0.6 - (v / top) * (H - pad * 1.1);
  const x = (i, len) => pad + (len <= 1 ? 0 : (i / (len - 1)) * (W - pad * 1.4));
  ctx.font = `${12 * dpr}px sans-serif`;
  ctx.fillStyle = "#9aa6b5";
  ctx.strokeStyle = "#2a323d";
  ctx.lineWidth = 1 * dpr;
  for (const g of [0, 0.25, 0.5, 0.75, 1].filter((v) => v <= top + 1e-9)) {
    ctx.beginPath(); ctx.moveTo(pad, y(g)); ctx.lineTo(W - 4, y(g)); ctx.stroke();
    ctx.fillText((g * 100).toFixed(0) + "%", 2 * dpr, y(g) + 4 * dpr);
  }
  const hline = (v, color, dash) => {
    ctx.save(); ctx.strokeStyle = color; ctx.lineWidth = 2.5 * dpr; ctx.setLineDash(dash.map((d) => d * dpr));
    ctx.beginPath(); ctx.moveTo(pad, y(v)); ctx.lineTo(W - 4, y(v)); ctx.stroke(); ctx.restore();
  };
  if (center !== null) hline(center, "#94a3b8", [3, 5]);
  if (maxRate !== null) hline(maxRate, "#f59e0b", [8, 5]);
  if (ucl !== null) hline(ucl, "#ef4444", [10, 5]);
  if (series.length) {
    ctx.strokeStyle = "#60a5fa";
    ctx.lineWidth = 3 * dpr;
    ctx.beginPath();
    series.forEach((v, i) => (i ? ctx.lineTo(x(i, series.length), y(v)) : ctx.moveTo(x(i, series.length), y(v))));
    ctx.stroke();
    const last = series[series.length - 1];
    ctx.fillStyle = ucl !== null && last > ucl ? "#ef4444" : "#60a5fa";
    ctx.beginPath(); ctx.arc(x(series.length - 1, series.length), y(last), 5 * dpr, 0, 7); ctx.fill();
  }
  setText("t-n", String(state.trend.length));
  const now = series.length ? series[series.length - 1] : null;
  setText("t-now", now === null ? "" : `· now ${pct(now)} over ${Math.min(n, fails.length)} parts`);
  const legend = $("t-legend");
  legend.replaceChildren();
  const item = (color, text) => { const i = el("i"); i.style.borderColor = color; legend.append(i, text); };
  item("#60a5fa", `rolling fail rate (${n} parts)`);
  if (ucl !== null) item("#ef4444", `p-chart UCL ${pct(ucl)}`);
  if (center !== null) item("#94a3b8", `baseline ${pct(center)}`);
  if (maxRate !== null) item("#f59e0b", `fail-rate limit ${pct(maxRate)}`);
  if (ucl === null && maxRate === null) legend.append(" · no control limit in the recipe");
}

// -- rejects and the review queue ----------------------------------------------------------------------------

function rowFor(r, extra) {
  const li = el("li", { tabindex: "0", "data-id": r.result_id },
    el("span", { class: "t", text: hhmmss(r.creation_time) }),
    el("span", { class: "chip " + r.result_state, text: r.result_state }),
    el("span", { class: "s" }, r.part_id || r.measurement_id || r.result_id.slice(0, 8),
      el("small", { text: extra || (r.reasons || []).join(" · ") })));
  li.addEventListener("click", () => openDetail(r.result_id));
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(r.result_id); });
  return li;
}

function renderRejects() {
  const ul = $("reject-list");
  ul.replaceChildren(...state.rejects.slice(0, 30).map((r) => rowFor(r)));
  if (!state.rejects.length) ul.append(el("li", { class: "empty", text: "no rejects in this batch" }));
}

async function refreshQueue() {
  try {
    const page = await api("/review?limit=50");
    const ul = $("queue-list");
    ul.replaceChildren(...page.items.map((r) => rowFor(r, r.job_id + " · " + (r.reasons || []).join(" · "))));
    if (!page.items.length) ul.append(el("li", { class: "empty", text: "nothing waiting for review" }));
    setText("q-count", page.has_more ? page.items.length + "+" : String(page.items.length));
  } catch (_e) { /* keep the last list */ }
}
const refreshQueueSoon = debounce(refreshQueue, 300);

// -- hold banner and release ------------------------------------------------------------------------------------

function setBatchState(s) {
  const chip = $("h-batch-state");
  chip.textContent = s || "–";
  chip.className = "chip " + (s || "");
}

function showHold(h) {
  state.hold = h;
  const box = $("hold");
  if (!h) { box.hidden = true; return; }
  setText("hold-batch", h.job_id);
  setText("hold-rule", h.rule);
  setText("hold-detail", h.detail);
  setText("hold-evidence", String((h.evidence || []).length));
  setText("hold-suspects", String((h.suspects || []).length));
  setText("hold-at", hhmmss(h.raised_at || h.at) + " UTC");
  setText("hold-by", h.raised_by || h.actor || "station");
  box.hidden = false;
  setBatchState("HOLD");
  updateReleaseWhy();
}

function updateReleaseWhy() {
  const role = state.role;
  const why = $("release-why");
  if (role === "quality" || role === "admin") why.textContent = "";
  else why.textContent = `this screen is logged in as ${role || "?"}: ${role || "it"} cannot release — a quality engineer must enter their token`;
  $("release-btn").textContent = role === "quality" || role === "admin" ? "Release hold…" : "Release (quality login)…";
}

function openRelease() {
  if (!state.hold) return;
  setText("r-batch", state.hold.job_id);
  $("r-token").value = "";
  $("r-reason").value = "";
  const msg = $("r-msg");
  msg.className = "msg";
  msg.textContent = state.role === "quality" || state.role === "admin" ? "" : `Operators cannot release holds. Enter a quality token.`;
  $("release-dlg").showModal();
  $("r-token").focus();
}

async function submitRelease(ev) {
  ev.preventDefault();
  const msg = $("r-msg");
  const token = $("r-token").value.trim();
  const reason = $("r-reason").value.trim();
  if (!token) { msg.className = "msg error"; msg.textContent = "A quality token is required."; return; }
  if (!reason) { msg.className = "msg error"; msg.textContent = "A reason is required."; return; }
  $("r-submit").disabled = true;
  try {
    await api("/batches/" + encodeURIComponent(state.hold.job_id) + "/release", { method: "POST", json: { reason }, token });
    msg.className = "msg ok";
    msg.textContent = "Released.";
    showHold(null);
    $("release-dlg").close();
    refreshStatus();
    refreshSummary();
  } catch (e) {
    msg.className = "msg error";
    msg.textContent = "Refused: " + e.message;
  } finally {
    $("r-submit").disabled = false;
  }
}

// -- detail and review -------------------------------------------------------------------------------------------

async function openDetail(id) {
  state.detailId = id;
  let r;
  try { r = await api("/inspections/" + id); } catch (e) { alert("cannot load part: " + e.message); return; }
  state.detail = r;
  const chip = $("d-verdict");
  chip.textContent = r.result_state;
  chip.className = "chip " + r.result_state;
  setText("d-title", (r.part_id || r.measurement_id) + " · " + r.job_id);
  const kv = $("d-kv");
  kv.replaceChildren();
  const add = (k, v) => kv.append(el("dt", { text: k }), el("dd", { text: v }));
  add("time", r.creation_time.replace("T", " ").slice(0, 19) + " UTC");
  add("disposition", r.disposition);
  add("reasons", (r.reasons || []).join(" · ") || r.error || "–");
  add("regions", (r.regions || []).map((g) => `${g.class_name} ${(g.score * 100).toFixed(0)}% ${g.area_px}px`).join(", ") || "none");
  add("score", r.image_score === null ? "–" : r.image_score.toFixed(3));
  add("model", `${r.model.name} ${r.model.version}`);
  add("result id", r.result_id);
  renderReviewState(r.review);
  renderReviewButtons(r);
  $("rv-token").value = "";
  $("rv-reason").value = "";
  const msg = $("rv-msg");
  msg.className = "msg";
  msg.textContent = "";
  $("detail-dlg").showModal();
  paintPart(r, $("d-img"), $("d-canvas"), $("d-img-note"));
}

function renderReviewState(rv) {
  const box = $("d-review-state");
  box.textContent = rv
    ? `Reviewed: ${rv.decision} ${rv.original_result_state} → ${rv.result_state} by ${rv.reviewed_by} at ${hhmmss(rv.reviewed_at)} UTC — “${rv.reason}”`
    : "";
}

function renderReviewButtons(r) {
  const box = $("rv-buttons");
  box.replaceChildren();
  const mk = (label, cls, decision, verdict) => {
    const b = el("button", { type: "button", class: "big " + cls, text: label, "data-decision": decision, "data-verdict": verdict });
    b.addEventListener("click", () => submitReview(decision, verdict));
    box.append(b);
  };
  if (r.result_state === "FAIL") { mk("Confirm FAIL", "bad", "confirm", "FAIL"); mk("Override → PASS", "ok", "override", "PASS"); }
  else if (r.result_state === "PASS") { mk("Confirm PASS", "ok", "confirm", "PASS"); mk("Override → FAIL", "bad", "override", "FAIL"); }
  else { mk("Decide PASS", "ok", "override", "PASS"); mk("Decide FAIL", "bad", "override", "FAIL"); }
}

async function submitReview(decision, verdict) {
  const msg = $("rv-msg");
  const token = $("rv-token").value.trim();
  const reason = $("rv-reason").value.trim();
  if (!token) { msg.className = "msg error"; msg.textContent = "A quality token is required."; return; }
  if (!reason) { msg.className = "msg error"; msg.textContent = "A reason is required."; return; }
  try {
    const r = await api("/inspections/" + state.detailId + "/review", { method: "POST", json: { decision, verdict, reason }, token });
    renderReviewState(r.review);
    msg.className = "msg ok";
    msg.textContent = `Recorded: ${r.review.decision} → ${r.review.result_state}.`;
    $("rv-token").value = "";
    refreshQueue();
  } catch (e) {
    msg.className = "msg error";
    msg.textContent = "Refused: " + e.message;
  }
}

// -- status and health ---------------------------------------------------------------------------------------------

async function refreshStatus() {
  let s;
  try { s = await api("/status"); } catch (e) {
    setText("s-store", "API unreachable: " + e.message);
    $("s-store").className = "bad-text";
    return;
  }
  const first = state.status === null;
  const jobChanged = s.job_id && s.job_id !== state.job;
  state.status = s;
  state.job = s.job_id;
  setText("h-station", s.station_id);
  setText("h-batch", s.job_id || "–");
  setText("h-product", s.product_id || "–");
  if (s.batch_state) setBatchState(s.batch_state);
  const src = $("s-source");
  src.textContent = `${s.source || "none"} · ${s.source_state}` + (s.source_fault ? ` · ${s.source_fault}` : "");
  src.className = s.source_state === "running" ? "ok-text" : "bad-text";
  setText("s-rate", `${s.rate_per_s.toFixed(1)} parts/s · ${s.parts} since start`);
  const l = s.latency_ms;
  const ms = (v) => (v === null ? "–" : v.toFixed(0) + " ms");
  setText("s-latency", `p50 ${ms(l.p50)} · p99 ${ms(l.p99)}`);
  const ob = $("s-outbox");
  ob.textContent = `${s.outbox_backlog} waiting`;
  ob.className = s.outbox_backlog > 1000 ? "warn-text" : "";
  setText("s-model", s.model ? `${s.model.name} ${s.model.version}` : "–");
  setText("s-recipe", s.recipe_id ? `${s.product_id} · ${s.recipe_id.slice(0, 12)}` : "–");
  const st = $("s-store");
  st.textContent = s.store_fault ? "FAULT: " + s.store_fault : "ok";
  st.className = s.store_fault ? "bad-text" : "ok-text";
  showDrift(s.drift);
  showFaults(s.faults || []);
  if (s.hold) showHold(s.hold); else if (state.hold && s.batch_state !== "HOLD") showHold(null);
  if (first || jobChanged) { await loadBatch(); drawTrend(); }
}

// Score drift is advisory (parts are still judged): an amber notice in the health panel, not the hold banner.
function showDrift(d) {
  const dd = $("s-drift");
  const drifting = Boolean(d) && d.state === "drifting";
  $("drift-warn").hidden = !drifting;
  $("health").classList.toggle("warn", drifting);
  if (!d) {
    dd.textContent = "not watched";
    dd.className = "muted";
    return;
  }
  const z = d.z === null ? "" : ` · z ${d.z > 0 ? "+" : ""}${d.z.toFixed(1)} (limit ±${d.z_limit})`;
  if (d.state === "filling") dd.textContent = `filling: ${d.samples} of ${d.window} passed parts`;
  else dd.textContent = (drifting ? "DRIFTING" : "ok") + z;
  dd.className = drifting ? "warn-text" : d.state === "ok" ? "ok-text" : "";
  if (drifting) {
    setText("drift-since", d.since ? "since " + hhmmss(d.since) + " UTC" : "");
    setText("drift-detail", d.detail || `z ${d.z} over the last ${d.window} passed parts`);
  }
}

function showFaults(faults) {
  const dd = $("s-faults");
  dd.textContent = faults.length
    ? faults.map((f) => `${f.kind} since ${hhmmss(f.since)} UTC` + (f.error_parts ? ` (${f.error_parts} ERROR)` : "")).join(" · ")
    : "none";
  dd.title = faults.map((f) => f.detail).join("\n");
  dd.className = faults.length ? "bad-text" : "ok-text";
}

async function loadBatch() {
  refreshSummary();
  refreshQueue();
  if (!state.job) return;
  const b = "&batch=" + encodeURIComponent(state.job);
  try {
    const recent = await api(`/recent?limit=${TREND_PARTS}` + b);
    state.trend = recent.items.slice().reverse().map((r) => ({ id: r.result_id, verdict: r.result_state }));
    const rej = await api("/recent?limit=30&verdict=FAIL&verdict=REVIEW&verdict=ERROR" + b);
    state.rejects = rej.items;
    renderRejects();
    if (recent.items.length && !state.latestId) onResult(recent.items[0], { initial: true });
  } catch (_e) { /* the stream fills in */ }
  drawTrend();
}

async function refreshWho() {
  try {
    const w = await api("/whoami");
    state.role = w.role;
    setText("h-role", w.anonymous ? "anonymous viewer" : `${w.name} (${w.role})`);
  } catch (_e) {
    state.role = null;
    setText("h-role", "not logged in");
  }
  updateReleaseWhy();
}

// -- live stream ------------------------------------------------------------------------------------------------------

function onResult(r, opts = {}) {
  if (state.latestId === r.result_id) return;
  state.latestId = r.result_id;
  showVerdict(r);
  showImage(r);
  if (opts.initial) return;
  if (r.job_id !== state.job) { refreshStatus(); return; }
  state.trend.push({ id: r.result_id, verdict: r.result_state });
  if (state.trend.length > TREND_PARTS) state.trend.shift();
  drawTrend();
  if (r.result_state !== "PASS") {
    state.rejects.unshift(r);
    state.rejects.length = Math.min(state.rejects.length, 30);
    renderRejects();
  }
  if (r.result_state === "FAIL" || r.result_state === "REVIEW") refreshQueueSoon();
  bumpCounters(r.result_state);
  refreshSummarySoon();
}

function handleMessage(event, data) {
  if (event === "result") onResult(data);
  else if (event === "hold_raised") { showHold(Object.assign({ raised_at: data.at, raised_by: data.actor }, data)); refreshStatus(); }
  else if (event === "hold_released") { showHold(null); refreshStatus(); refreshSummary(); }
  else if (event === "review") refreshQueueSoon();
  else if (event === "batch_opened" || event === "batch_closed" || event === "dropped") refreshStatus().then(loadBatch);
  else if (event === "station_fault" || event === "station_recovered") refreshStatus();
}

function setLive(on) {
  state.live = on;
  const e = $("live");
  e.textContent = on ? "● LIVE" : "● OFFLINE";
  e.className = "live " + (on ? "on" : "off");
  $("verdict").classList.toggle("stale", !on && state.latestId !== null);
}

async function streamLoop() {
  let backoff = 1000;
  for (;;) {
    const ctrl = new AbortController();
    let watchdog = null;
    const pet = () => { clearTimeout(watchdog); watchdog = setTimeout(() => ctrl.abort(), 40000); };
    try {
      const resp = await fetch(API + "/stream", { headers: authHeaders(), signal: ctrl.signal, cache: "no-store" });
      if (resp.status === 401) { askLogin("the station needs a token to show results"); await sleep(5000); continue; }
      if (!resp.ok || !resp.body) throw new Error("stream HTTP " + resp.status);
      pet();
      setLive(true);
      if (backoff > 1000) { refreshStatus().then(loadBatch); } // catch up after a gap
      backoff = 1000;
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pet();
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message";
          const lines = [];
          for (const line of chunk.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) lines.push(line.slice(5).trimStart());
          }
          if (lines.length) {
            try { handleMessage(event, JSON.parse(lines.join("\n"))); } catch (err) { console.error(err); }
          }
        }
      }
    } catch (_e) { /* reconnect below */ }
    clearTimeout(watchdog);
    setLive(false);
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

// -- login -------------------------------------------------------------------------------------------------------------

let loginShown = false;
function askLogin(why) {
  if (loginShown || $("login-dlg").open) return;
  loginShown = true;
  const msg = $("l-msg");
  msg.className = "msg error";
  msg.textContent = why || "";
  $("l-token").value = state.token;
  $("login-dlg").showModal();
}

async function submitLogin(ev) {
  ev.preventDefault();
  const token = $("l-token").value.trim();
  try {
    if (token) await api("/whoami", { token });
  } catch (e) {
    const msg = $("l-msg");
    msg.className = "msg error";
    msg.textContent = "Refused: " + e.message;
    return;
  }
  state.token = token;
  if (token) localStorage.setItem("qcs.token", token); else localStorage.removeItem("qcs.token");
  $("login-dlg").close();
  loginShown = false;
  await refreshWho();
  state.status = null;
  await refreshStatus();
}

// -- start -----------------------------------------------------------------------------------------------------------

function wire() {
  $("release-btn").addEventListener("click", openRelease);
  $("release-form").addEventListener("submit", submitRelease);
  $("r-cancel").addEventListener("click", () => $("release-dlg").close());
  $("d-close").addEventListener("click", () => { $("detail-dlg").close(); state.detailId = null; });
  $("review-form").addEventListener("submit", (e) => e.preventDefault());
  $("login-btn").addEventListener("click", () => { loginShown = false; askLogin(""); });
  $("login-form").addEventListener("submit", submitLogin);
  $("l-cancel").addEventListener("click", () => { $("login-dlg").close(); loginShown = false; });
  window.addEventListener("resize", debounce(drawTrend, 150));
}

async function start() {
  wire();
  await refreshWho();
  await refreshStatus();
  drawTrend();
  streamLoop();
  setInterval(refreshStatus, 2000);
  setInterval(refreshSummary, 5000);
  setInterval(refreshQueue, 15000);
}

start();
