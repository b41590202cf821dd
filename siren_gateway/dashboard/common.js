// What the operator view (app.js) and the wall display (wall.js) share: the session, the API,
// labels, times as people read them, the status shapes, and the live stream.
import { TEXT } from "/dashboard/i18n.js";

// The page's state object (each page has its own); bound once at the page's start.
let ctx = { lang: "zh", token: null, site: null };
export function bindState(state) { ctx = state; }

export const t = (key) => (TEXT[ctx.lang] && TEXT[ctx.lang][key]) || TEXT.en[key] || key;
export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// -- the session (per browser tab) ---------------------------------------------------------------
export function loadSession(state) {
  Object.assign(state, { token: sessionStorage.getItem("sg-token"), role: sessionStorage.getItem("sg-role"),
    user: sessionStorage.getItem("sg-user"), lang: localStorage.getItem("sg-lang") || "zh" });
}

// The login form, the same on every page; `onLoggedIn` runs once a token is held.
export function mountLogin(section, state, onLoggedIn) {
  section.innerHTML = `<h2 data-i18n="login">${esc(t("login"))}</h2>
    <form id="login-form">
      <label><span data-i18n="username">${esc(t("username"))}</span> <input name="username" autocomplete="username" required></label>
      <label><span data-i18n="password">${esc(t("password"))}</span> <input name="password" type="password" autocomplete="current-password" required></label>
      <button type="submit" data-i18n="login">${esc(t("login"))}</button>
      <p id="login-error" class="error" role="alert"></p>
    </form>`;
  section.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = section.querySelector("#login-error");
    try { await logIn(state, new FormData(event.target)); error.textContent = ""; onLoggedIn(); }
    catch (failure) { error.textContent = failure.message; }
  });
}

export async function logIn(state, form) {
  const response = await fetch("/api/auth/token", { method: "POST", body: new URLSearchParams(form) });
  if (!response.ok) throw new Error(t("login_failed"));
  const body = await response.json();
  Object.assign(state, { token: body.access_token, role: body.role, user: form.get("username") });
  sessionStorage.setItem("sg-token", state.token); sessionStorage.setItem("sg-role", state.role);
  sessionStorage.setItem("sg-user", state.user);
}

export function endSession(state) {
  // End it on the server too (its token is then worthless), then forget it here.
  if (state.token) fetch("/api/auth/logout", { method: "POST", headers: { Authorization: `Bearer ${state.token}` } }).catch(() => {});
  sessionStorage.clear();
  Object.assign(state, { token: null, role: null, user: null });
}

// -- the API -------------------------------------------------------------------------------------
export class LoggedOut extends Error {}

export async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (ctx.token) headers.Authorization = `Bearer ${ctx.token}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { ctx.onLoggedOut?.(); throw new LoggedOut("logged out"); }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : body;
    throw new Error(typeof detail === "string" ? detail : (detail.message || JSON.stringify(detail)));
  }
  return body;
}

// -- times for people: the site's zone, the reader's language; UTC on hover ----------------------
function parts(date) {
  const format = new Intl.DateTimeFormat("en-GB", { timeZone: ctx.site?.timezone || undefined,
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    second: "2-digit", weekday: "short", hourCycle: "h23" });
  return Object.fromEntries(format.formatToParts(date).map((p) => [p.type, p.value]));
}
const WEEKDAYS_ZH = { Mon: "周一", Tue: "周二", Wed: "周三", Thu: "周四", Fri: "周五", Sat: "周六", Sun: "周日" };
const MONTHS_EN = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

// "2027-09-18 10:00 (周六)" / "Sat 18 Sep 2027 10:00" in the site's time zone.
export function localText(iso, seconds = false) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso ?? "");
  const p = parts(date);
  const clock = `${p.hour}:${p.minute}${seconds ? `:${p.second}` : ""}`;
  if (ctx.lang === "zh") return `${p.year}-${p.month}-${p.day} ${clock} (${WEEKDAYS_ZH[p.weekday]})`;
  return `${p.weekday} ${Number(p.day)} ${MONTHS_EN[Number(p.month) - 1]} ${p.year} ${clock}`;
}

// "in 3 min", "12 s ago", "3 小时前"
export function relativeText(iso, now = Date.now()) {
  const seconds = Math.round((Date.parse(iso) - now) / 1000);
  const format = new Intl.RelativeTimeFormat(ctx.lang === "zh" ? "zh-CN" : "en", { numeric: "always", style: "short" });
  const size = Math.abs(seconds);
  if (size < 60) return format.format(seconds, "second");
  if (size < 3600) return format.format(Math.round(seconds / 60), "minute");
  if (size < 86400 * 2) return format.format(Math.round(seconds / 3600), "hour");
  return format.format(Math.round(seconds / 86400), "day");
}

// A <time> element: local time, optionally with the relative one; the UTC instant on hover.
export function when(iso, { relative = false, seconds = false } = {}) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return esc(iso);
  const utc = date.toISOString().replace(".000Z", "Z");
  const text = localText(iso, seconds) + (relative ? ` · ${relativeText(iso)}` : "");
  return `<time datetime="${esc(utc)}" title="UTC ${esc(utc)}">${esc(text)}</time>`;
}

// -- status classes: each has a colour and a shape (never colour alone) ---------------------------
export const CLASSES = ["healthy", "degraded", "fault", "offline", "sounding", "inhibited"];
// Worst first: what a cluster of markers or a summary shows.
export const SEVERITY_ORDER = ["sounding", "fault", "offline", "degraded", "inhibited", "healthy"];
const SHAPE_PATHS = {
  healthy: '<circle cx="10" cy="10" r="7"/>',
  degraded: '<path d="M10 2 L18 10 L10 18 L2 10 Z"/>',
  fault: '<path d="M10 2 L19 18 L1 18 Z"/><path class="mark" d="M10 7 V12 M10 14.5 V15.5"/>',
  offline: '<rect x="3" y="3" width="14" height="14"/><path class="mark" d="M6.5 6.5 L13.5 13.5 M13.5 6.5 L6.5 13.5"/>',
  sounding: '<path d="M10 1 L12.6 7 L19 7.4 L14 11.6 L15.6 18 L10 14.5 L4.4 18 L6 11.6 L1 7.4 L7.4 7 Z"/>',
  inhibited: '<circle cx="10" cy="10" r="7"/><path class="mark" d="M5 15 L15 5"/>',
};
export function shape(cls, label = "") {
  return `<svg class="shape s-${cls}" viewBox="0 0 20 20" width="16" height="16" aria-hidden="true" focusable="false">${SHAPE_PATHS[cls] || SHAPE_PATHS.offline}</svg>${label ? `<span class="sr-only">${esc(label)}</span>` : ""}`;
}

// -- the live stream -----------------------------------------------------------------------------
// Reconnects after a blip (growing pause, at most 10 s); `onState(live)` says which it is.
export function connectStream({ onOpen, onEvent, onState }) {
  let delay = 1000, closed = false, ws = null;
  const open = () => {
    if (closed || !ctx.token) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    // The token travels as a subprotocol, never in the URL (which logs and proxies keep).
    ws = new WebSocket(`${scheme}://${location.host}/api/stream`, ["siren-gateway", `bearer.${ctx.token}`]);
    ws.onopen = () => { delay = 1000; onState(true); onOpen?.(); };
    ws.onmessage = (message) => onEvent(JSON.parse(message.data));
    ws.onclose = () => {
      onState(false);
      if (!closed) { setTimeout(open, delay); delay = Math.min(delay * 2, 10_000); }
    };
  };
  open();
  return { close() { closed = true; if (ws) { ws.onclose = null; ws.close(); } } };
}
