// Siren Gateway control-room dashboard: plain ES modules, no build step, no network but the
// gateway itself (and the site's own tile server, when it has one): the control room may have
// no internet.
import {
  CLASSES, api, bindState, connectStream, endSession, esc, loadSession, localText, mountLogin,
  shape, t, when,
} from "/dashboard/common.js";
import { createMaintenance } from "/dashboard/maintenance.js";
import { createMap } from "/dashboard/map.js";

const $ = (sel) => document.querySelector(sel);
const S = {
  token: null, role: null, user: null, lang: "zh",
  sirens: new Map(), alerts: [], signals: [], zones: [], site: null,
  sort: { key: "id", dir: 1 }, selected: new Set(), detail: null, preview: null,
  activation: null, refreshTimer: null, pendingRefresh: false, stream: null,
  coverage: null, layer: null, candidates: [], coverageTimer: null, mapView: null,
  seenAlerts: null, muted: localStorage.getItem("sg-muted") === "1", fleetTimer: null,
};
loadSession(S);
bindState(S);
S.onLoggedOut = () => logout();
// What tests and the benchmark read: when the first full render happened, how many since.
window.__sg = { firstRenderMs: null, renders: 0, renderMsTotal: 0, renderMsMax: 0, streamEvents: 0 };
const ROLE_RANK = { viewer: 1, technician: 2, operator: 3, admin: 4 };
const canControl = () => (ROLE_RANK[S.role] || 0) >= ROLE_RANK.operator;
const zoneName = (id) => {
  const z = S.zones.find((x) => x.id === id);
  return z ? ((S.lang === "zh" && z.name_zh) || z.name) : id;
};

// -- language ----------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = S.lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
    el.placeholder = t(el.dataset.i18nPlaceholder);
    el.setAttribute("aria-label", t(el.dataset.i18nPlaceholder));
  });
  $("#lang").textContent = S.lang === "zh" ? "English" : "中文";
  $("#lang").setAttribute("lang", S.lang === "zh" ? "en" : "zh-CN");
  if (S.site) $("#site-name").textContent = (S.lang === "zh" && S.site.name_zh) || S.site.name;
  const chosen = $("#class-filter").value || "all";
  $("#class-filter").innerHTML = ["all", ...CLASSES].map((c) => `<option value="${c}">${esc(t("cls_" + c))}</option>`).join("");
  $("#class-filter").value = chosen;
  $("#legend").innerHTML = CLASSES.map((c) => `<span class="c-${c}">${shape(c)} ${esc(t("cls_" + c))}</span>`).join("");
  renderMute();
  renderZoneChoices(); renderSignals(); render(true); renderAlerts(); renderSchedules(); renderCoverage();
  if (S.mapView) S.mapView.relabel();
  if (S.token && S.site) { maintenance.render(); refreshFleetCharts(); }
}

// -- login -------------------------------------------------------------------------------------
function logout() {
  endSession(S);
  if (S.stream) { S.stream.close(); S.stream = null; }
  clearInterval(S.refreshTimer); clearInterval(S.fleetTimer); clearInterval(S.clusterTimer);
  stopAlarm(); S.seenAlerts = null; S.alerts = [];
  $("#app").hidden = true; $("#maintenance-card").hidden = true; $("#logout").hidden = true;
  $("#login").hidden = false; $("#who").textContent = "";
}

// -- rendering ---------------------------------------------------------------------------------
function visible(s) {
  const text = $("#filter").value.trim().toLowerCase();
  const wanted = $("#class-filter").value;
  if (wanted && wanted !== "all" && s._class !== wanted) return false;
  if (!text) return true;
  return [s.id, s.name, s.zones.join(" "), s.faults.join(" "), s.state].join(" ").toLowerCase().includes(text);
}

function sortValue(s, key) {
  if (key === "battery") return s.telemetry?.battery_voltage ?? -1;
  if (key === "faults") return s.faults.length;
  if (key === "zones") return s.zones.join(",");
  if (key === "class") return s._class;
  return s[key] ?? "";
}

function render(relabel = false) {
  if (!S.sirens.size) return;
  const started = performance.now();
  const counts = {};
  for (const s of S.sirens.values()) { s._class = s.status_class; counts[s._class] = (counts[s._class] || 0) + 1; }
  $("#counts").innerHTML = CLASSES.filter((c) => counts[c]).map((c) =>
    `<span class="badge c-${c}" data-count="${c}">${shape(c)} ${esc(t("cls_" + c))} ${counts[c]}</span>`).join("");
  if (S.mapView) S.mapView.update([...S.sirens.values()]);
  const { key, dir } = S.sort;
  const rows = [...S.sirens.values()].filter(visible).sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    return (x > y ? 1 : x < y ? -1 : 0) * dir;
  });
  if (relabel) rowCache.delete($("#sirens tbody"));
  updateRows($("#sirens tbody"), rows.map((s) => [s.id, `<tr data-id="${esc(s.id)}" data-class="${s._class}" class="${S.selected.has(s.id) ? "selected" : ""}">
      <td class="select-col">${canControl() ? `<input type="checkbox" data-select="${esc(s.id)}" aria-label="${esc(t("select"))} ${esc(s.id)}" ${S.selected.has(s.id) ? "checked" : ""}>` : ""}</td>
      <td><a href="#" data-detail="${esc(s.id)}">${esc(s.id)}</a></td><td>${esc(s.name)}</td><td>${esc(s.zones.map(zoneName).join(" "))}</td>
      <td><span class="badge c-${s._class}">${shape(s._class)} ${esc(t("cls_" + s._class))}</span></td>
      <td>${esc(t("state_" + s.state))}</td><td>${s.telemetry?.battery_voltage ?? ""}</td>
      <td>${esc(s.faults.map((f) => t("fault_" + f)).join(", "))}</td></tr>`]));
  document.querySelectorAll("#sirens th[aria-sort]").forEach((th) => {
    const button = th.querySelector("button");
    th.setAttribute("aria-sort", button.dataset.sort === key ? (dir > 0 ? "ascending" : "descending") : "none");
  });
  window.__sg.renders += 1;
  if (window.__sg.firstRenderMs === null) window.__sg.firstRenderMs = performance.now();
  const cost = performance.now() - started;
  window.__sg.renderMsTotal += cost;
  window.__sg.renderMsMax = Math.max(window.__sg.renderMsMax, cost);
  if (S.detail) renderDetail();
}

// Replace only the rows whose content changed, and move rows only when the order did: a row
// being clicked is not swapped under the pointer by a refresh (a lost click, an unstable page).
const rowCache = new WeakMap();
function updateRows(tbody, rows) {
  const cache = rowCache.get(tbody) || new Map();
  const wanted = new Set(rows.map(([id]) => id));
  for (const [id, entry] of cache) if (!wanted.has(id)) { entry.tr.remove(); cache.delete(id); }
  const known = new Set([...cache.values()].map((e) => e.tr));
  for (const tr of [...tbody.children]) if (!known.has(tr)) tr.remove();
  let previous = null;
  for (const [id, html] of rows) {
    let entry = cache.get(id);
    if (!entry || entry.html !== html) {
      const holder = document.createElement("tbody");
      holder.innerHTML = html;
      const tr = holder.firstElementChild;
      if (entry) entry.tr.replaceWith(tr);
      entry = { tr, html };
      cache.set(id, entry);
    }
    const next = previous ? previous.nextElementSibling : tbody.firstElementChild;
    if (next !== entry.tr) tbody.insertBefore(entry.tr, next);
    previous = entry.tr;
  }
  rowCache.set(tbody, cache);
}

async function refreshSirens() {
  S.pendingRefresh = false;
  try {
    const list = await api("/api/sirens");
    for (const s of list) S.sirens.set(s.id, s);
    render();
  } catch (error) { console.warn(error); }
}

function refreshSoon() {
  if (S.pendingRefresh) return;
  S.pendingRefresh = true;
  setTimeout(refreshSirens, 300);  // a burst of events costs one refresh
}

// -- coverage ----------------------------------------------------------------------------------
async function refreshCoverage() {
  S.coverageTimer = null;
  try {
    [S.coverage, S.layer] = await Promise.all([api("/api/coverage"), api("/api/coverage/layer")]);
  } catch (error) { S.coverage = null; S.layer = null; }
  renderCoverage();
}

function refreshCoverageSoon() {
  if (!S.coverageTimer) S.coverageTimer = setTimeout(refreshCoverage, 1000);  // one per burst
}

const pct = (v) => `${(v * 100).toFixed(1)}%`;

function renderCoverage() {
  const card = $("#coverage-card");
  const c = S.coverage;
  card.hidden = !(c && c.enabled);
  if (card.hidden) return;
  const rows = c.zones.map((z) => `<tr data-zone="${esc(z.zone)}" class="${z.below_target ? "below" : ""}">
      <td>${esc(zoneName(z.zone))}</td><td data-share="${z.covered_share}">${t("cov_now")} ${pct(z.covered_share)}</td>
      <td>${t("cov_healthy")} ${pct(z.healthy_share)}</td><td>${t("cov_target")} ${pct(z.target_share)}</td>
      <td>${z.repair.length ? `${esc(t("cov_repair"))}: ${esc(z.repair.join(", "))}` : ""}</td></tr>`);
  rows.push(`<tr data-zone="district"><td><b>${esc(t("cov_district"))}</b></td><td>${t("cov_now")} ${pct(c.district.covered_share)}</td>
      <td>${t("cov_healthy")} ${pct(c.district.healthy_share)}</td><td></td><td></td></tr>`);
  $("#coverage-zones tbody").innerHTML = rows.join("");
  drawLayer();
}

// The coverage raster as an image under the markers (row 0 of the server's cells is the south).
function drawLayer() {
  if (!S.mapView) return;
  const layer = S.layer;
  if (!layer || !layer.enabled || !$("#coverage-toggle").checked) { S.mapView.setCoverage(null, null, S.candidates); return; }
  const canvas = document.createElement("canvas");
  canvas.width = layer.width; canvas.height = layer.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(layer.width, layer.height);
  const colours = { 1: [0, 114, 178, 80], 2: [120, 120, 120, 80], 3: [213, 94, 0, 190] };
  for (let r = 0; r < layer.height; r++) {
    const y = layer.height - 1 - r;
    for (let col = 0; col < layer.width; col++) {
      const colour = colours[layer.cells.charCodeAt(r * layer.width + col) - 48];
      if (colour) image.data.set(colour, (y * layer.width + col) * 4);
    }
  }
  ctx.putImageData(image, 0, 0);
  S.mapView.setCoverage(canvas.toDataURL(), layer.bounds, S.candidates);
}

async function whatIf() {
  if (!S.candidates.length) { $("#whatif-result").textContent = ""; return; }
  try {
    const body = await api("/api/coverage/what-if", { method: "POST", json: { add: S.candidates } });
    const zones = Object.entries(body.would_be.zones).map(([id, v]) => `${zoneName(id)} ${pct(body.now.zones[id])} → ${pct(v)}`);
    $("#whatif-result").innerHTML = `${esc(t("whatif_result"))}: ${esc(t("cov_district"))} <b data-whatif="district">${pct(body.now.district)} → ${pct(body.would_be.district)}</b>; ${esc(zones.join("; "))}`;
  } catch (error) { $("#whatif-result").textContent = error.message; }
}

function candidatePicked(point) {
  S.candidates.push(point);
  drawLayer(); whatIf();
}

// -- detail ------------------------------------------------------------------------------------
async function showDetail(id) {
  S.detail = { id, history: [] };
  $("#detail").hidden = false;
  $("#siren-command").hidden = !canControl();
  $("#command-result").textContent = "";
  renderDetail();
  maintenance.showSiren(id);
  try {
    const body = await api(`/api/sirens/${encodeURIComponent(id)}?history_minutes=720`);
    if (S.detail?.id === id) { S.detail.history = body.history || []; renderDetail(); }
  } catch (error) { console.warn(error); }
  $("#detail").scrollIntoView({ block: "nearest" });
}

function renderDetail() {
  const s = S.sirens.get(S.detail.id);
  if (!s) return;
  const title = `${s.id} ${s.name} — ${t("cls_" + s.status_class)}`;
  if ($("#detail-title").textContent !== title) $("#detail-title").textContent = title;
  const points = Object.entries(s.telemetry || {}).map(([k, v]) => `<div><b>${esc(k)}</b>: ${esc(v)}</div>`).join("");
  const html = `<p>${esc(t("col_state"))}: ${esc(t("state_" + s.state))} · ${esc(t("reachability"))}: ${esc(s.reachability)} ·
    ${esc(t("last_seen"))}: ${s.last_seen ? when(s.last_seen, { relative: true, seconds: true }) : "—"} · ${esc(t("col_faults"))}: ${esc(s.faults.join(", ") || "—")}</p>
    <div class="points">${points}</div>`;
  if ($("#detail-body").shown !== html) { $("#detail-body").innerHTML = html; $("#detail-body").shown = html; }
  lineChart("#chart-battery", [S.detail.history.map((h) => [Date.parse(h.time), h.values.battery_voltage])]);
  lineChart("#chart-temperature", [S.detail.history.map((h) => [Date.parse(h.time), h.values.cabinet_temperature])]);
}

// Lines over time (each a list of [ms, value]); the axes' ends labelled, times in the site zone.
function lineChart(selector, series, { names = [], integers = false } = {}) {
  const svg = $(selector);
  const lines = series.map((data) => data.filter(([, v]) => typeof v === "number"));
  const all = lines.flat();
  if (all.length < 2) { svg.innerHTML = `<text x="10" y="70">${esc(t("no_history"))}</text>`; return; }
  const xs = all.map((d) => d[0]), ys = all.map((d) => d[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (integers) { y0 = Math.min(0, y0); y1 = Math.max(y1, 1); }
  const sx = (x) => 44 + (x - x0) / Math.max(x1 - x0, 1) * 360, sy = (y) => 122 - (y - y0) / Math.max(y1 - y0, 0.01) * 108;
  const paths = lines.map((data, i) => `<polyline class="line line-${i}" fill="none" points="${data.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ")}"/>`);
  const legend = names.map((n, i) => `<text class="legend-${i}" x="${60 + i * 150}" y="12" font-size="11">${esc(n)}</text>`).join("");
  const hhmm = (ms) => localText(new Date(ms).toISOString()).replace(/^.* (\d\d:\d\d).*$/, "$1");
  svg.innerHTML = `${paths.join("")}${legend}<text x="2" y="20" font-size="11">${y1}</text><text x="2" y="126" font-size="11">${y0}</text>
    <text x="44" y="142" font-size="11">${esc(hhmm(x0))}</text><text x="370" y="142" font-size="11">${esc(hhmm(x1))}</text>`;
}

// -- the fleet at a glance: the last 24 h from stored history, the batteries now -------------------
async function refreshFleetCharts() {
  try {
    const history = await api("/api/fleet/history?hours=24&points=97");
    const points = history.points.map((p) => [Date.parse(p.at), p]);
    lineChart("#chart-fleet", [points.map(([x, p]) => [x, p.online]), points.map(([x, p]) => [x, p.with_faults])],
      { names: [t("fleet_online"), t("fleet_faults")], integers: true });
    $("#chart-fleet").dataset.online = String(history.points.at(-1)?.online ?? "");
  } catch (error) { console.warn(error); }
  renderBatteries();
}

function renderBatteries() {
  const volts = [...S.sirens.values()].map((s) => s.telemetry?.battery_voltage).filter((v) => typeof v === "number");
  const svg = $("#chart-batteries");
  if (!volts.length) { svg.innerHTML = `<text x="10" y="70">${esc(t("no_history"))}</text>`; return; }
  const lo = Math.floor(Math.min(...volts) * 2) / 2, hi = Math.max(Math.ceil(Math.max(...volts) * 2) / 2, lo + 0.5);
  const bins = Array.from({ length: Math.round((hi - lo) / 0.5) }, () => 0);
  volts.forEach((v) => { bins[Math.min(bins.length - 1, Math.floor((v - lo) / 0.5))] += 1; });
  const top = Math.max(...bins), width = 360 / bins.length;
  svg.innerHTML = bins.map((n, i) => `<rect class="bar" data-bin="${(lo + i * 0.5).toFixed(1)}" data-count="${n}" x="${44 + i * width + 1}" y="${122 - n / top * 108}" width="${width - 2}" height="${n / top * 108}"><title>${(lo + i * 0.5).toFixed(1)}–${(lo + (i + 1) * 0.5).toFixed(1)} V: ${n}</title></rect>`).join("") +
    `<text x="2" y="20" font-size="11">${top}</text><text x="44" y="142" font-size="11">${lo} V</text><text x="370" y="142" font-size="11">${hi} V</text>`;
}

// -- the gateway nodes (a cluster; hidden for a single gateway) --------------------------------------
async function refreshCluster() {
  let info;
  try { info = await api("/api/cluster"); } catch (error) { console.warn(error); return; }
  const card = $("#cluster-card");
  card.hidden = info.mode !== "cluster";
  if (card.hidden) return false;
  $("#cluster-nodes tbody").innerHTML = info.nodes.map((n) => `<tr data-node="${esc(n.id)}" data-alive="${n.alive}" data-leader="${n.leader}">
    <td>${esc(n.id)}</td><td>${esc(n.address)} (pid ${n.pid})</td>
    <td>${esc(!n.alive ? t("node_dead") : n.leader ? t("node_leader") : t("node_follower"))}</td>
    <td>${n.alive ? n.sirens_owned : "–"}</td><td>${when(n.last_heartbeat, { relative: true, seconds: true })}</td></tr>`).join("");
  return true;
}

// Reset, arm, disarm: the answer is the siren's own (confirmed from its status, or not).
async function sendSirenCommand(event) {
  event.preventDefault();
  const form = new FormData(event.target), id = S.detail?.id;
  if (!id) return;
  const out = $("#command-result");
  out.textContent = "…";
  try {
    const body = await api(`/api/sirens/${encodeURIComponent(id)}/commands`, {
      method: "POST", json: { command: form.get("command"), comment: form.get("comment") } });
    const o = body.sirens[0];
    out.textContent = `${t("cmd_" + o.result)}: ${o.reason}`;
    out.dataset.result = o.result;
  } catch (error) { out.textContent = error.message; out.dataset.result = "error"; }
}

// -- alerts, and the attention a new serious one gets ------------------------------------------------
const LOUD = new Set(["critical", "major"]);
async function refreshAlerts() {
  try {
    S.alerts = await api("/api/alerts");
    // Alerts active when the page opened are not "new": only those raised since flash and sound.
    if (S.seenAlerts === null) S.seenAlerts = new Set(S.alerts.filter((a) => a.state === "active").map((a) => a.id));
    renderAlerts();
  } catch (error) { console.warn(error); }
}

function renderAlerts() {
  const active = S.alerts.filter((a) => a.state === "active");
  const loud = active.filter((a) => LOUD.has(a.severity) && S.seenAlerts && !S.seenAlerts.has(a.id));
  const shown = S.alerts.filter((a) => a.state !== "cleared").concat(S.alerts.filter((a) => a.state === "cleared").slice(0, 10));
  $("#alerts").innerHTML = shown.map((a) => `<li class="sev-${a.severity} state-${a.state}${loud.includes(a) ? " flash" : ""}" data-alert="${a.id}" data-rule="${esc(a.rule)}" data-siren="${esc(a.siren_id || "")}">
      <b>${esc(t("sev_" + a.severity))}</b> ${esc(t("fault_" + a.rule))} · ${esc(a.siren_id || a.subject || "")} · ${esc(t("astate_" + a.state))}
      · ${when(a.raised_at, { relative: true })}
      <div>${esc(a.message)}</div>${a.comment ? `<div><i>${esc(a.acknowledged_by)}: ${esc(a.comment)}</i></div>` : ""}
      ${a.state === "active" && canControl() ? `<form class="ack"><input name="comment" required aria-label="${esc(t("comment"))}" placeholder="${esc(t("comment"))}"><button>${esc(t("acknowledge"))}</button></form>` : ""}
    </li>`).join("") || `<li>${esc(t("no_alerts"))}</li>`;
  document.title = active.length ? `(${active.length}) ${t("title")}` : t("title");
  const header = $("#header");
  header.classList.toggle("alarm", loud.length > 0);
  $("#attention").hidden = !loud.length;
  $("#attention").textContent = loud.length ? `${t("new_alarm")}: ${loud.map((a) => `${t("fault_" + a.rule)} ${a.siren_id || a.subject || ""}`).join("; ")}` : "";
  if (loud.length && !S.muted) startAlarm(); else stopAlarm();
}

function startAlarm() {
  const sound = $("#alert-sound");
  if (sound.paused) sound.play().catch((error) => console.warn("alarm sound:", error));
}
function stopAlarm() {
  const sound = $("#alert-sound");
  if (!sound.paused) { sound.pause(); sound.currentTime = 0; }
}
function renderMute() {
  $("#mute").setAttribute("aria-pressed", String(S.muted));
  $("#mute").textContent = t(S.muted ? "unmute" : "mute");
}

async function acknowledge(event) {
  event.preventDefault();
  const li = event.target.closest("li");
  try {
    await api(`/api/alerts/${li.dataset.alert}/ack`, { method: "POST", json: { comment: new FormData(event.target).get("comment") } });
    await refreshAlerts();
  } catch (error) { alert(error.message); }
}

// -- activations -------------------------------------------------------------------------------
function renderZoneChoices() {
  $("#zone-choices").innerHTML = S.zones.map((z) => `<label><input type="checkbox" name="zone" value="${esc(z.id)}"> ${esc(zoneName(z.id))}</label>`).join(" ");
}
function renderSignals() {
  const chosen = $("#signal").value;
  $("#signal").innerHTML = S.signals.map((s) => `<option value="${esc(s.id)}">${esc(S.lang === "zh" ? s.name_zh : s.name_en)}</option>`).join("");
  if (chosen) $("#signal").value = chosen;
}

function activationRequest() {
  const target = document.querySelector("input[name=target]:checked").value;
  const targets = { all: target === "all", zones: [], sirens: [] };
  if (target === "zones") targets.zones = [...document.querySelectorAll("input[name=zone]:checked")].map((x) => x.value);
  if (target === "sirens") targets.sirens = [...S.selected];
  return { targets, class: $("#klass").value, action: "sound", signal: $("#signal").value };
}

async function preview() {
  $("#activation-error").textContent = "";
  const request = activationRequest();
  try {
    const body = await api("/api/activations/preview", { method: "POST", json: request });
    S.preview = { request, body };
    const emergency = request.class === "emergency";
    $("#preview-summary").textContent = `${t("will_sound")}: ${body.sirens.length} · ${t("excluded")}: ${body.excluded.length}` +
      (body.conflicts.length ? ` · ${t("conflicts")}: ${body.conflicts.length}` : "");
    $("#preview-list").innerHTML = body.sirens.map((s) => `<li data-preview="${esc(s.id)}">${esc(s.id)} ${esc(s.name)}</li>`).join("") +
      body.excluded.map((s) => `<li class="r-excluded">${esc(s.id)} (${esc(t("excluded"))})</li>`).join("");
    $("#emergency-confirm").hidden = !emergency;
    $("#emergency-ack").checked = false;
    $("#send").disabled = emergency;  // the explicit confirmation step comes first
    $("#send").classList.toggle("emergency", emergency);
    $("#send").textContent = emergency ? t("send_emergency") : t("send");
    $("#preview-box").hidden = false;
  } catch (error) { $("#activation-error").textContent = error.message; }
}

async function send() {
  if (!S.preview) return;
  const { request, body } = S.preview;
  if (request.class === "emergency" && !$("#emergency-ack").checked) {
    $("#activation-error").textContent = t("confirm_first");
    return;
  }
  const json = { ...request };
  if (body.confirmation_token) json.confirmation_token = body.confirmation_token;
  try {
    const activation = await api("/api/activations", { method: "POST", json });
    S.preview = null; $("#preview-box").hidden = true;
    S.activation = activation; renderProgress(); pollActivation(activation.id);
  } catch (error) { $("#activation-error").textContent = error.message; }
}

async function pollActivation(id) {
  while (S.activation && S.activation.id === id && S.activation.state === "running") {
    await new Promise((r) => setTimeout(r, 700));
    try { S.activation = await api(`/api/activations/${id}`); renderProgress(); } catch (error) { console.warn(error); }
  }
}

function renderProgress() {
  const a = S.activation;
  if (!a) return;
  $("#progress").hidden = false;
  $("#progress-id").textContent = `#${a.id} (${t("astate_" + a.state)})`;
  const c = a.counts;
  $("#progress-summary").innerHTML = `${esc(t("r_sounded"))} ${c.sounded} · ${esc(t("r_failed"))} ${c.failed} · ${esc(t("r_no_feedback"))} ${c.no_feedback} ·
    ${esc(t("excluded"))} ${c.excluded} · ${esc(t("r_pending"))} ${c.pending + c.accepted}` +
    (a.state !== "running" ? ` · <b data-report>${esc(t("sounding_rate"))} ${a.sounding_rate === null ? "—" : (100 * a.sounding_rate).toFixed(1) + " %"}</b>` : "");
  $("#progress-list").innerHTML = a.sirens.map((r) => `<li class="r-${r.status}" data-result="${esc(r.siren_id)}" data-status="${r.status}" title="${esc(r.reason)}">${esc(r.siren_id)}: ${esc(t("r_" + r.status))}</li>`).join("");
}

// -- schedules ---------------------------------------------------------------------------------
async function refreshSchedules() {
  try {
    const plans = await api("/api/schedules");
    S.schedules = await Promise.all(plans.map(async (p) => ({
      ...p, next: await api(`/api/schedules/${encodeURIComponent(p.id)}/next?count=3`),
      past: (await api(`/api/schedules/${encodeURIComponent(p.id)}`)).occurrences || [],
    })));
    renderSchedules();
  } catch (error) { console.warn(error); }
}

function renderSchedules() {
  if (!S.schedules) return;
  const soon = [];
  $("#schedules").innerHTML = S.schedules.map((p) => {
    const next = p.next.filter((n) => !n.excluded);
    if (next.length && Date.parse(next[0].scheduled_at) - Date.now() < 86400e3) soon.push(`${p.name} ${localText(next[0].scheduled_at)}`);
    const past = p.past.filter((o) => !["scheduled", "notified"].includes(o.state)).slice(-5).reverse();
    return `<div class="plan" data-plan="${esc(p.id)}"><h3>${esc((S.lang === "zh" && p.name_zh) || p.name)}</h3>
      <div>${esc(t("next"))}: ${next.map((n, i) => when(n.scheduled_at, { relative: i === 0 })).join(" · ") || "—"}</div>
      <ul>${past.map((o) => `<li>${when(o.scheduled_at)} ${esc(t("ostate_" + o.state))}
        ${o.steps.length ? `<a href="#" data-report-id="${o.id}">${esc(t("report"))}</a>` : ""} <span data-report-out="${o.id}"></span></li>`).join("")}</ul></div>`;
  }).join("") || esc(t("no_schedules"));
  if (soon.length) showBanner(`${t("upcoming_test")}: ${soon.join("; ")}`);
}

async function showReport(id) {
  const r = await api(`/api/reports/${id}`);
  document.querySelector(`[data-report-out="${id}"]`).textContent =
    `${t("r_sounded")} ${r.counts.sounded}/${r.commanded} · ${t("sounding_rate")} ${r.sounding_rate === null ? "—" : (100 * r.sounding_rate).toFixed(1) + " %"}`;
}

function showBanner(text) { $("#banner").textContent = text; $("#banner").hidden = false; }

// -- live stream -------------------------------------------------------------------------------
function streamState(live) {
  const el = $("#stream");
  el.className = live ? "stream live" : "stream lost";
  el.dataset.i18n = live ? "stream_live" : "stream_lost";
  el.textContent = t(el.dataset.i18n);
}

function onEvent(event) {
  window.__sg.streamEvents += 1;
  if (event.type === "StatusChanged" || event.type === "FaultsChanged") { refreshSoon(); refreshCoverageSoon(); }
  else if (event.type === "AlertChanged") { refreshAlerts(); refreshSoon(); if (event.alert && event.alert.rule === "coverage_low") refreshCoverageSoon(); }
  else if (event.type === "SirenResultFinal" && S.activation && event.activation_id === S.activation.id) {
    const r = S.activation.sirens.find((x) => x.siren_id === event.siren_id);
    if (r) { r.status = event.status; r.reason = event.reason; renderProgress(); }
  } else if (event.type === "MaintenanceChanged") {
    maintenance.refreshSoon();
    if (S.detail && S.detail.id === event.siren_id) maintenance.showSiren(event.siren_id);
  } else if (event.type === "ScheduleEvent") {
    if (event.kind === "notice") showBanner(`${t("upcoming_test")}: ${event.plan_name} ${localText(event.scheduled_at)}`);
    refreshSchedules();
  }
}

// -- start -------------------------------------------------------------------------------------
async function start() {
  $("#login").hidden = true; $("#app").hidden = false; $("#logout").hidden = false;
  $("#who").textContent = `${S.user} (${S.role})`;
  document.querySelectorAll(".control-only").forEach((el) => { el.hidden = !canControl(); });
  try {
    [S.site, S.signals] = await Promise.all([api("/api/site"), api("/api/signals")]);
    S.zones = S.site.zones;
  } catch (error) { console.warn(error); return; }
  if (!S.mapView) {
    S.mapView = createMap($("#map"), { site: S.site, zoneName, onSiren: showDetail, onPick: candidatePicked });
  }
  applyLanguage();
  await refreshCoverage();
  await Promise.all([refreshSirens(), refreshAlerts(), refreshSchedules(), maintenance.refresh()]);
  refreshFleetCharts();
  if (await refreshCluster()) S.clusterTimer = setInterval(refreshCluster, 5000);
  S.stream = connectStream({ onState: streamState, onEvent, onOpen: () => { refreshSirens(); refreshAlerts(); maintenance.refresh(); } });
  // Measured values (battery, current) change without events: a steady refresh as well.
  S.refreshTimer = setInterval(refreshSirens, S.sirens.size > 500 ? 5000 : 2000);
  S.fleetTimer = setInterval(refreshFleetCharts, 60_000);
}

mountLogin($("#login"), S, start);
$("#logout").addEventListener("click", logout);
$("#lang").addEventListener("click", () => { S.lang = S.lang === "zh" ? "en" : "zh"; localStorage.setItem("sg-lang", S.lang); applyLanguage(); });
$("#mute").addEventListener("click", () => {
  S.muted = !S.muted; localStorage.setItem("sg-muted", S.muted ? "1" : "0");
  renderMute(); renderAlerts();
});
$("#filter").addEventListener("input", () => render());
$("#class-filter").addEventListener("change", () => render());
$("#sirens thead").addEventListener("click", (e) => {
  const key = e.target.closest("[data-sort]")?.dataset.sort; if (!key) return;
  S.sort = { key, dir: S.sort.key === key ? -S.sort.dir : 1 }; render();
});
$("#sirens tbody").addEventListener("click", (e) => {
  if (e.target.dataset.detail) { e.preventDefault(); showDetail(e.target.dataset.detail); }
  if (e.target.dataset.select) {
    const id = e.target.dataset.select;
    if (e.target.checked) S.selected.add(id); else S.selected.delete(id);
    e.target.closest("tr").classList.toggle("selected", e.target.checked);
    rowCache.delete($("#sirens tbody")); render();
  }
});
$("#alerts").addEventListener("submit", acknowledge);
$("#siren-command").addEventListener("submit", sendSirenCommand);
$("#preview").addEventListener("click", preview);
$("#send").addEventListener("click", send);
$("#cancel-preview").addEventListener("click", () => { S.preview = null; $("#preview-box").hidden = true; });
$("#emergency-ack").addEventListener("change", (e) => { $("#send").disabled = !e.target.checked; });
$("#coverage-toggle").addEventListener("change", drawLayer);
$("#whatif-add").addEventListener("click", () => { S.mapView?.pick(); $("#whatif-result").textContent = t("whatif_pick"); });
$("#whatif-clear").addEventListener("click", () => { S.candidates = []; drawLayer(); whatIf(); });
$("#schedules").addEventListener("click", (e) => { if (e.target.dataset.reportId) { e.preventDefault(); showReport(e.target.dataset.reportId); } });
// Relative times ("12 s ago") age: redrawn every 15 s.
setInterval(() => { if (S.token) { renderAlerts(); renderSchedules(); } }, 15_000);

const maintenance = createMaintenance({ api, t, esc, $, when, state: () => S });
applyLanguage();
if (S.token) start(); else $("#login").hidden = false;
