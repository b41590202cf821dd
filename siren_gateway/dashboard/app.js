// Siren Gateway control-room dashboard: plain ES modules, no build step, no network but the
// gateway itself (the control room may have no internet).
import { TEXT } from "/dashboard/i18n.js";
import { createMaintenance } from "/dashboard/maintenance.js";

const $ = (sel) => document.querySelector(sel);
const S = {
  token: sessionStorage.getItem("sg-token"), role: sessionStorage.getItem("sg-role"),
  user: sessionStorage.getItem("sg-user"), lang: localStorage.getItem("sg-lang") || "zh",
  sirens: new Map(), alerts: [], signals: [], zones: [], site: null,
  sort: { key: "id", dir: 1 }, selected: new Set(), detail: null, preview: null,
  activation: null, refreshTimer: null, pendingRefresh: false, ws: null,
  coverage: null, layer: null, candidates: [], picking: false, coverageTimer: null,
};
// What tests and the benchmark read: when the first full render happened, how many since.
window.__sg = { firstRenderMs: null, renders: 0, renderMsTotal: 0, renderMsMax: 0, streamEvents: 0 };
const ROLE_RANK = { viewer: 1, technician: 2, operator: 3, admin: 4 };
const canControl = () => (ROLE_RANK[S.role] || 0) >= ROLE_RANK.operator;
const t = (key) => (TEXT[S.lang] && TEXT[S.lang][key]) || TEXT.en[key] || key;
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
// A time as the control room reads it: the site's zone, the reader's language; UTC on hover.
function when(iso) {
  if (!iso) return "—";
  const options = { timeZone: S.site?.timezone || undefined, weekday: "short", year: "numeric",
    month: S.lang === "zh" ? "2-digit" : "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    hour12: false };
  let text = iso;
  try { text = new Intl.DateTimeFormat(S.lang === "zh" ? "zh-CN" : "en-GB", options).format(new Date(iso)); }
  catch (error) { console.warn(error); }
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${esc(text)}</time>`;
}

// -- API ---------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { logout(); throw new Error("logged out"); }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : body;
    throw new Error(typeof detail === "string" ? detail : (detail.message || JSON.stringify(detail)));
  }
  return body;
}

// -- language ----------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = S.lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  $("#lang").textContent = S.lang === "zh" ? "English" : "中文";
  if (S.site) $("#site-name").textContent = (S.lang === "zh" && S.site.name_zh) || S.site.name;
  const classes = ["all", "healthy", "degraded", "fault", "offline", "sounding", "inhibited"];
  const chosen = $("#class-filter").value || "all";
  $("#class-filter").innerHTML = classes.map((c) => `<option value="${c}">${esc(t("cls_" + c))}</option>`).join("");
  $("#class-filter").value = chosen;
  $("#legend").innerHTML = classes.slice(1).map((c) => `<span><i class="dot c-${c}"></i>${esc(t("cls_" + c))}</span>`).join("");
  renderZoneChoices(); renderSignals(); render(); renderAlerts(); renderSchedules(); renderCoverage();
  if (S.token && S.site) maintenance.render();
}

// -- login -------------------------------------------------------------------------------------
async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const response = await fetch("/api/auth/token", { method: "POST", body: new URLSearchParams(form) });
    if (!response.ok) throw new Error(t("login_failed"));
    const body = await response.json();
    Object.assign(S, { token: body.access_token, role: body.role, user: form.get("username") });
    sessionStorage.setItem("sg-token", S.token); sessionStorage.setItem("sg-role", S.role);
    sessionStorage.setItem("sg-user", S.user);
    $("#login-error").textContent = "";
    start();
  } catch (error) { $("#login-error").textContent = error.message; }
}

function logout() {
  // End the session on the server too (its token is then worthless), then forget it here.
  if (S.token) fetch("/api/auth/logout", { method: "POST", headers: { Authorization: `Bearer ${S.token}` } }).catch(() => {});
  sessionStorage.clear();
  Object.assign(S, { token: null, role: null, user: null });
  if (S.ws) { S.ws.onclose = null; S.ws.close(); S.ws = null; }
  clearInterval(S.refreshTimer);
  $("#app").hidden = true; $("#maintenance-card").hidden = true; $("#logout").hidden = true; $("#login").hidden = false; $("#who").textContent = "";
}

// -- siren classes -----------------------------------------------------------------------------
const MINOR_FAULTS = new Set(["door_open", "battery_box_open", "charger_fault"]);
function classify(s) {
  if (s.inhibited) return "inhibited";
  if (s.reachability === "offline" || s.reachability === "unknown") return "offline";
  if (s.sounding || s.horn_on) return "sounding";
  if (s.faults.some((f) => !MINOR_FAULTS.has(f))) return "fault";
  if (s.faults.length || s.reachability === "stale") return "degraded";
  return "healthy";
}

// -- rendering ---------------------------------------------------------------------------------
let projection = null, unproject = null;
function project(s) {
  if (!projection) {
    const all = [...S.sirens.values()];
    const lats = all.map((x) => x.location.lat), lons = all.map((x) => x.location.lon);
    if (S.layer && S.layer.enabled) {  // the zones' areas are on the map too
      const b = S.layer.bounds; lats.push(b.south, b.north); lons.push(b.west, b.east);
    }
    const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
    const kx = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    const w = Math.max((maxLon - minLon) * kx, 1e-6), h = Math.max(maxLat - minLat, 1e-6);
    const scale = Math.min(920 / w, 620 / h);
    projection = (x) => [40 + (x.location.lon - minLon) * kx * scale, 660 - (x.location.lat - minLat) * scale];
    unproject = (x, y) => ({ lat: minLat + (660 - y) / scale, lon: minLon + (x - 40) / (kx * scale) });
  }
  return projection(s);
}
const at = (lat, lon) => project({ location: { lat, lon } });

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

function render() {
  if (!S.sirens.size) return;
  const started = performance.now();
  const counts = {};
  for (const s of S.sirens.values()) { s._class = classify(s); counts[s._class] = (counts[s._class] || 0) + 1; }
  $("#counts").innerHTML = Object.entries(counts).map(([c, n]) => `<span class="c-${c}" data-count="${c}">${esc(t("cls_" + c))} ${n}</span>`).join("");
  // Map: one circle per siren, reused; only its class and title change.
  const map = $("#map");
  for (const s of S.sirens.values()) {
    let dot = map.querySelector(`circle[data-id="${CSS.escape(s.id)}"]`);
    if (!dot) {
      const [x, y] = project(s);
      dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      Object.entries({ cx: x, cy: y, r: S.sirens.size > 300 ? 4 : 8, "data-id": s.id }).forEach(([k, v]) => dot.setAttribute(k, v));
      dot.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "title"));
      dot.addEventListener("click", () => showDetail(s.id));
      map.appendChild(dot);
    }
    const cls = `c-${s._class}`;
    if (dot.getAttribute("class") !== cls) dot.setAttribute("class", cls);
    dot.firstChild.textContent = `${s.id} ${s.name}: ${t("cls_" + s._class)}`;
  }
  // Table
  const { key, dir } = S.sort;
  const rows = [...S.sirens.values()].filter(visible).sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    return (x > y ? 1 : x < y ? -1 : 0) * dir;
  });
  updateRows($("#sirens tbody"), rows.map((s) => [s.id, `<tr data-id="${esc(s.id)}" data-class="${s._class}" class="${S.selected.has(s.id) ? "selected" : ""}">
      <td class="select-col">${canControl() ? `<input type="checkbox" data-select="${esc(s.id)}" ${S.selected.has(s.id) ? "checked" : ""}>` : ""}</td>
      <td><a href="#" data-detail="${esc(s.id)}">${esc(s.id)}</a></td><td>${esc(s.name)}</td><td>${esc(s.zones.join(" "))}</td>
      <td><span class="badge c-${s._class}">${esc(t("cls_" + s._class))}</span></td>
      <td>${esc(t("state_" + s.state))}</td><td>${s.telemetry?.battery_voltage ?? ""}</td>
      <td>${esc(s.faults.map((f) => t("fault_" + f)).join(", "))}</td></tr>`]));
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
function zoneName(id) {
  const z = S.zones.find((x) => x.id === id);
  return z ? ((S.lang === "zh" && z.name_zh) || z.name) : id;
}

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

function drawLayer() {
  const map = $("#map");
  let group = map.querySelector("#coverage-layer");
  if (!group) {
    group = document.createElementNS("http://www.w3.org/2000/svg", "g");
    group.id = "coverage-layer";
    map.insertBefore(group, map.firstChild);  // under the sirens
  }
  const layer = S.layer;
  if (!layer || !layer.enabled || !$("#coverage-toggle").checked || !S.sirens.size) { group.innerHTML = ""; return; }
  const canvas = document.createElement("canvas");
  canvas.width = layer.width; canvas.height = layer.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(layer.width, layer.height);
  const colours = { 1: [59, 111, 214, 90], 2: [122, 122, 122, 90], 3: [217, 72, 15, 190] };
  for (let r = 0; r < layer.height; r++) {
    const y = layer.height - 1 - r;  // row 0 is the southern edge
    for (let col = 0; col < layer.width; col++) {
      const colour = colours[layer.cells.charCodeAt(r * layer.width + col) - 48];
      if (colour) image.data.set(colour, (y * layer.width + col) * 4);
    }
  }
  ctx.putImageData(image, 0, 0);
  const b = layer.bounds;
  const [x0, y0] = at(b.north, b.west), [x1, y1] = at(b.south, b.east);
  const outlines = layer.zones.flatMap((z) => z.area.map((ring) =>
    `<path class="zone-outline" data-zone="${esc(z.zone)}" d="M${ring.map(([lat, lon]) => at(lat, lon).map((v) => v.toFixed(1)).join(",")).join("L")}Z"/>`));
  const marks = S.candidates.map((p, i) => { const [x, y] = at(p.lat, p.lon); return `<circle class="candidate" data-candidate="${i}" cx="${x}" cy="${y}" r="7"/>`; });
  group.innerHTML = `<image id="coverage-image" href="${canvas.toDataURL()}" x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" preserveAspectRatio="none" style="image-rendering: pixelated"/>${outlines.join("")}${marks.join("")}`;
}

async function whatIf() {
  if (!S.candidates.length) { $("#whatif-result").textContent = ""; return; }
  try {
    const body = await api("/api/coverage/what-if", { method: "POST", json: { add: S.candidates } });
    const zones = Object.entries(body.would_be.zones).map(([id, v]) => `${zoneName(id)} ${pct(body.now.zones[id])} → ${pct(v)}`);
    $("#whatif-result").innerHTML = `${esc(t("whatif_result"))}: ${esc(t("cov_district"))} <b data-whatif="district">${pct(body.now.district)} → ${pct(body.would_be.district)}</b>; ${esc(zones.join("; "))}`;
  } catch (error) { $("#whatif-result").textContent = error.message; }
}

function pickCandidate(event) {
  if (!S.picking || !unproject) return;
  const map = $("#map");
  const point = map.createSVGPoint();
  point.x = event.clientX; point.y = event.clientY;
  const local = point.matrixTransform(map.getScreenCTM().inverse());
  S.candidates.push(unproject(local.x, local.y));
  S.picking = false; map.classList.remove("picking");
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
  $("#detail").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function renderDetail() {
  const s = S.sirens.get(S.detail.id);
  if (!s) return;
  $("#detail-title").textContent = `${s.id} ${s.name} — ${t("cls_" + classify(s))}`;
  const points = Object.entries(s.telemetry || {}).map(([k, v]) => `<div><b>${esc(k)}</b>: ${esc(v)}</div>`).join("");
  $("#detail-body").innerHTML = `<p>${esc(t("col_state"))}: ${esc(t("state_" + s.state))} · ${esc(t("reachability"))}: ${esc(s.reachability)} ·
    ${esc(t("last_seen"))}: ${esc(s.last_seen || "—")} · ${esc(t("col_faults"))}: ${esc(s.faults.join(", ") || "—")}</p>
    <div class="points">${points}</div>`;
  chart("#chart-battery", S.detail.history, "battery_voltage");
  chart("#chart-temperature", S.detail.history, "cabinet_temperature");
}

function chart(selector, history, point) {
  const data = history.map((h) => [Date.parse(h.time), h.values[point]]).filter(([, v]) => typeof v === "number");
  const svg = $(selector);
  if (data.length < 2) { svg.innerHTML = `<text x="10" y="70">${esc(t("no_history"))}</text>`; return; }
  const xs = data.map((d) => d[0]), ys = data.map((d) => d[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => 40 + (x - x0) / Math.max(x1 - x0, 1) * 350, sy = (y) => 125 - (y - y0) / Math.max(y1 - y0, 0.01) * 110;
  svg.innerHTML = `<polyline fill="none" stroke="#1f6fb2" stroke-width="1.5" points="${data.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ")}"/>
    <text x="2" y="18" font-size="11">${y1}</text><text x="2" y="128" font-size="11">${y0}</text>`;
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

// -- alerts ------------------------------------------------------------------------------------
async function refreshAlerts() {
  try { S.alerts = await api("/api/alerts"); renderAlerts(); } catch (error) { console.warn(error); }
}

function renderAlerts() {
  const shown = S.alerts.filter((a) => a.state !== "cleared").concat(S.alerts.filter((a) => a.state === "cleared").slice(0, 10));
  $("#alerts").innerHTML = shown.map((a) => `<li class="sev-${a.severity} state-${a.state}" data-alert="${a.id}" data-rule="${esc(a.rule)}" data-siren="${esc(a.siren_id || "")}">
      <b>${esc(t("sev_" + a.severity))}</b> ${esc(t("fault_" + a.rule))} · ${esc(a.siren_id || a.subject || "")} · ${esc(t("astate_" + a.state))}
      <div>${esc(a.message)}</div>${a.comment ? `<div><i>${esc(a.acknowledged_by)}: ${esc(a.comment)}</i></div>` : ""}
      ${a.state === "active" && canControl() ? `<form class="ack"><input name="comment" required placeholder="${esc(t("comment"))}"><button>${esc(t("acknowledge"))}</button></form>` : ""}
    </li>`).join("") || `<li>${esc(t("no_alerts"))}</li>`;
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
  $("#zone-choices").innerHTML = S.zones.map((z) => `<label><input type="checkbox" name="zone" value="${esc(z.id)}"> ${esc((S.lang === "zh" && z.name_zh) || z.name)}</label>`).join(" ");
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
    if (next.length && Date.parse(next[0].scheduled_at) - Date.now() < 86400e3) soon.push(`${p.name} ${next[0].scheduled_local}`);
    const past = p.past.filter((o) => !["scheduled", "notified"].includes(o.state)).slice(-5).reverse();
    return `<div class="plan" data-plan="${esc(p.id)}"><h3>${esc((S.lang === "zh" && p.name_zh) || p.name)}</h3>
      <div>${esc(t("next"))}: ${next.map((n) => esc(n.scheduled_local)).join(" · ") || "—"}</div>
      <ul>${past.map((o) => `<li>${esc(o.scheduled_local)} ${esc(t("ostate_" + o.state))}
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
function connectStream() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // The token travels as a subprotocol, never in the URL (which logs and proxies keep).
  const ws = new WebSocket(`${scheme}://${location.host}/api/stream`, ["siren-gateway", `bearer.${S.token}`]);
  S.ws = ws;
  ws.onopen = () => { $("#stream").className = "stream live"; $("#stream").dataset.i18n = "stream_live"; $("#stream").textContent = t("stream_live"); refreshSirens(); refreshAlerts(); maintenance.refresh(); };
  ws.onmessage = (message) => {
    const event = JSON.parse(message.data);
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
      if (event.kind === "notice") showBanner(`${t("upcoming_test")}: ${event.plan_name} ${event.scheduled_at}`);
      refreshSchedules();
    }
  };
  ws.onclose = () => {
    $("#stream").className = "stream lost"; $("#stream").dataset.i18n = "stream_lost"; $("#stream").textContent = t("stream_lost");
    if (S.token) setTimeout(connectStream, 2000);
  };
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
  applyLanguage();
  await refreshCoverage();  // before the first map: the zones' areas set its extent
  await Promise.all([refreshSirens(), refreshAlerts(), refreshSchedules(), maintenance.refresh()]);
  drawLayer();
  connectStream();
  // Measured values (battery, current) change without events: a steady refresh as well.
  S.refreshTimer = setInterval(refreshSirens, S.sirens.size > 500 ? 5000 : 2000);
}

$("#login-form").addEventListener("submit", login);
$("#logout").addEventListener("click", logout);
$("#lang").addEventListener("click", () => { S.lang = S.lang === "zh" ? "en" : "zh"; localStorage.setItem("sg-lang", S.lang); applyLanguage(); });
$("#filter").addEventListener("input", render);
$("#class-filter").addEventListener("change", render);
$("#sirens thead").addEventListener("click", (e) => {
  const key = e.target.dataset.sort; if (!key) return;
  S.sort = { key, dir: S.sort.key === key ? -S.sort.dir : 1 }; render();
});
$("#sirens tbody").addEventListener("click", (e) => {
  if (e.target.dataset.detail) { e.preventDefault(); showDetail(e.target.dataset.detail); }
  if (e.target.dataset.select) {
    const id = e.target.dataset.select;
    if (e.target.checked) S.selected.add(id); else S.selected.delete(id);
    e.target.closest("tr").classList.toggle("selected", e.target.checked);
  }
});
$("#alerts").addEventListener("submit", acknowledge);
$("#siren-command").addEventListener("submit", sendSirenCommand);
$("#preview").addEventListener("click", preview);
$("#send").addEventListener("click", send);
$("#cancel-preview").addEventListener("click", () => { S.preview = null; $("#preview-box").hidden = true; });
$("#emergency-ack").addEventListener("change", (e) => { $("#send").disabled = !e.target.checked; });
$("#coverage-toggle").addEventListener("change", drawLayer);
$("#whatif-add").addEventListener("click", () => { S.picking = true; $("#map").classList.add("picking"); $("#whatif-result").textContent = t("whatif_pick"); });
$("#whatif-clear").addEventListener("click", () => { S.candidates = []; drawLayer(); whatIf(); });
$("#map").addEventListener("click", pickCandidate);
$("#schedules").addEventListener("click", (e) => { if (e.target.dataset.reportId) { e.preventDefault(); showReport(e.target.dataset.reportId); } });

const maintenance = createMaintenance({ api, t, esc, $, when, state: () => S });
applyLanguage();
if (S.token) start(); else $("#login").hidden = false;
