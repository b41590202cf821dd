// The wall display: read-only, for any viewer, meant to be read from across the room. Large
// figures (ready to sound, with faults, offline, sounding now), a countdown to the next test in
// local time, the map and the newest alerts; live over the stream, with a poll as a fallback, and
// a blip in the connection says so on screen while the last figures stay up.
import {
  CLASSES, api, bindState, connectStream, esc, loadSession, localText, mountLogin, shape, t, when,
} from "/dashboard/common.js";
import { createMap } from "/dashboard/map.js";

const $ = (sel) => document.querySelector(sel);
const S = { token: null, role: null, user: null, lang: "zh", site: null, mapView: null,
  nextTest: null, pending: false, stream: null, lastOk: null, failing: false, live: false };
loadSession(S);
bindState(S);
S.onLoggedOut = () => { sessionStorage.clear(); location.reload(); };
window.__wall = { refreshes: 0 };
const zoneName = (id) => {
  const z = S.site?.zones.find((x) => x.id === id);
  return z ? ((S.lang === "zh" && z.name_zh) || z.name) : id;
};

function applyLanguage() {
  document.documentElement.lang = S.lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $("#lang").textContent = S.lang === "zh" ? "English" : "中文";
  $("#lang").setAttribute("lang", S.lang === "zh" ? "en" : "zh-CN");
  document.title = `${t("title")} · ${t("wall_link")}`;
  if (S.site) $("#site-name").textContent = (S.lang === "zh" && S.site.name_zh) || S.site.name;
  $("#legend").innerHTML = CLASSES.map((c) => `<span>${shape(c)} ${esc(t("cls_" + c))}</span>`).join("");
  S.mapView?.relabel();
  renderBlip();
  if (S.token) refresh();
}

// -- the figures -------------------------------------------------------------------------------------
async function refresh() {
  S.pending = false;
  try {
    const [summary, sirens, alerts] = await Promise.all([
      api("/api/fleet/summary"), api("/api/sirens"), api("/api/alerts?state=active")]);
    S.lastOk = new Date(); S.failing = false;
    window.__wall.refreshes += 1;
    renderFigures(summary);
    S.mapView?.update(sirens.map((s) => ({ ...s, _class: s.status_class })));
    renderAlerts(alerts);
  } catch (error) {
    console.warn(error);
    S.failing = true;
  }
  renderBlip();
}

function refreshSoon() {
  if (S.pending) return;
  S.pending = true;
  setTimeout(refresh, 300);  // a burst of events costs one refresh
}

function renderFigures(f) {
  const set = (id, value, nonzero = false) => {
    const el = $(id);
    el.textContent = value;
    el.closest(".figure").classList.toggle("nonzero", nonzero);
  };
  set("#f-ready", `${(f.ready_share * 100).toFixed(1)}%`);
  $("#f-ready").dataset.value = String(f.ready);
  $("#f-ready-count").textContent = `${f.ready} / ${f.total}`;
  set("#f-faults", String(f.with_faults), f.with_faults > 0);
  set("#f-offline", String(f.offline), f.offline > 0);
  set("#f-sounding", String(f.sounding), f.sounding > 0);
}

function renderAlerts(alerts) {
  const newest = [...alerts].sort((a, b) => Date.parse(b.raised_at) - Date.parse(a.raised_at)).slice(0, 8);
  $("#alerts").innerHTML = newest.map((a) => `<li class="sev-${a.severity}" data-alert="${a.id}" data-rule="${esc(a.rule)}" data-siren="${esc(a.siren_id || "")}">
      <b>${esc(t("sev_" + a.severity))}</b> ${esc(t("fault_" + a.rule))} · ${esc(a.siren_id || zoneName(a.subject?.replace(/^coverage:/, "")) || "")}
      · ${when(a.raised_at, { relative: true })}</li>`).join("") || `<li>${esc(t("no_alerts"))}</li>`;
}

// -- the next test, and the clock ----------------------------------------------------------------------
async function refreshNextTest() {
  try {
    const plans = await api("/api/schedules");
    const next = await Promise.all(plans.map(async (p) => {
      const upcoming = (await api(`/api/schedules/${encodeURIComponent(p.id)}/next?count=3`)).find((n) => !n.excluded);
      return upcoming ? { plan: p, at: upcoming.scheduled_at } : null;
    }));
    S.nextTest = next.filter(Boolean).sort((a, b) => Date.parse(a.at) - Date.parse(b.at))[0] || null;
  } catch (error) { console.warn(error); }
  tick();
}

function countdown(ms) {
  if (ms <= 0) return t("state_sounding");
  const s = Math.floor(ms / 1000), d = Math.floor(s / 86400);
  const hms = [Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60, s % 60].map((n) => String(n).padStart(2, "0")).join(":");
  return d ? `${d} ${S.lang === "zh" ? "天" : "d"} ${hms}` : hms;
}

function tick() {
  $("#clock").textContent = S.site ? localText(new Date().toISOString(), true) : "";
  const next = S.nextTest;
  $("#f-countdown").textContent = next ? countdown(Date.parse(next.at) - Date.now()) : "—";
  $("#f-next").innerHTML = next ? `${esc((S.lang === "zh" && next.plan.name_zh) || next.plan.name)}<br>${when(next.at)}` : esc(t("no_next_test"));
  $("#updated").textContent = S.lastOk ? `${t("wall_updated")} ${localText(S.lastOk.toISOString(), true)}` : "";
}

function renderBlip() {
  const lost = S.token && (!S.live || S.failing);
  $("#blip").hidden = !lost;
  $("#blip").textContent = lost ? t("wall_reconnecting") : "";
  const el = $("#stream");
  el.className = S.live ? "stream live" : "stream lost";
  el.textContent = t(S.live ? "stream_live" : "stream_lost");
}

// -- start -------------------------------------------------------------------------------------------
async function start() {
  $("#login").hidden = true; $("#wall").hidden = false;
  try { S.site = await api("/api/site"); } catch (error) { console.warn(error); return; }
  S.mapView = createMap($("#map"), { site: S.site, zoneName, onSiren: () => {}, onPick: () => {} });
  applyLanguage();
  await Promise.all([refresh(), refreshNextTest()]);
  S.stream = connectStream({
    onState: (live) => { S.live = live; renderBlip(); if (live) refresh(); },
    onEvent: (event) => {
      if (["StatusChanged", "FaultsChanged", "AlertChanged", "SirenResultFinal"].includes(event.type)) refreshSoon();
      if (event.type === "ScheduleEvent") refreshNextTest();
    },
  });
  setInterval(refresh, 5000);  // measured values change without events; and a fallback
  setInterval(refreshNextTest, 60_000);
  setInterval(tick, 1000);
}

mountLogin($("#login"), S, start);
$("#lang").addEventListener("click", () => { S.lang = S.lang === "zh" ? "en" : "zh"; localStorage.setItem("sg-lang", S.lang); applyLanguage(); tick(); });
applyLanguage();
if (S.token) start(); else $("#login").hidden = false;
