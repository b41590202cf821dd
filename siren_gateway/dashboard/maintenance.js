// The maintenance view: work orders by state and their moves, inspection tasks due and overdue,
// completing a task with its checklist, an extra inspection round, the monthly report; and, in
// a siren's detail, its asset record and its timeline. What a person may do is the server's
// answer (an order's `moves`, the role): this page only offers it.

const ORDER_STATES = ["open", "assigned", "in_progress", "resolved", "reopened", "verified", "cancelled"];
const RESULTS = ["ok", "fault", "not_applicable"];
const ASSET_FIELDS = ["serial_number", "model", "installed_on", "installer", "mount_height_m",
  "battery_capacity_ah", "rated_db_c", "notes"];

export function createMaintenance({ api, t, esc, $, state, when }) {
  // drafts: what a person has chosen or typed in an order's row, kept across the live
  // refreshes that redraw the table (else an update arriving mid-edit would wipe it).
  const M = { orders: [], tasks: [], plans: [], completing: null, timer: null, drafts: {} };
  const rank = () => ({ viewer: 1, technician: 2, operator: 3, admin: 4 }[state().role] || 0);
  const canMaintain = () => rank() >= 2;
  const canOperate = () => rank() >= 3;
  const name = (x) => (state().lang === "zh" && x.name_zh) || x.name;
  const itemText = (item) => (state().lang === "zh" && item.text_zh) || item.text;
  const planName = (id) => { const p = M.plans.find((x) => x.id === id); return p ? name(p) : id; };

  async function refresh() {
    M.timer = null;
    try {
      [M.orders, M.tasks, M.plans] = await Promise.all([
        api("/api/workorders"), api("/api/inspections/tasks?state=open"), api("/api/inspections/plans")]);
      render();
    } catch (error) { console.warn(error); }
  }

  function refreshSoon() { if (!M.timer) M.timer = setTimeout(refresh, 300); }

  function render() {
    $("#maintenance-card").hidden = false;
    document.querySelectorAll(".maintain-only").forEach((el) => { el.hidden = !canMaintain(); });
    document.querySelectorAll(".operate-only-m").forEach((el) => { el.hidden = !canOperate(); });
    const counts = Object.fromEntries(ORDER_STATES.map((s) => [s, 0]));
    M.orders.forEach((o) => { counts[o.state] += 1; });
    $("#order-counts").innerHTML = ORDER_STATES.map((s) =>
      `<span class="chip wo-${s}" data-order-count="${s}">${esc(t("wo_" + s))} <b>${counts[s]}</b></span>`).join("");
    const focused = document.activeElement;
    const refocus = focused && $("#orders").contains(focused) && ["move", "note", "assignee"]
      .map((k) => focused.dataset[k] && `[data-${k}="${focused.dataset[k]}"]`).find(Boolean);
    $("#orders tbody").innerHTML = M.orders.map(orderRow).join("") ||
      `<tr><td colspan="8">${esc(t("no_orders"))}</td></tr>`;
    if (refocus) document.querySelector(`#orders ${refocus}`)?.focus();
    const overdue = M.tasks.filter((x) => x.overdue).length;
    $("#task-counts").innerHTML = `<span class="chip" data-task-count="open">${esc(t("tasks_open"))} <b>${M.tasks.length}</b></span>
      <span class="chip ${overdue ? "overdue" : ""}" data-task-count="overdue">${esc(t("tasks_overdue"))} <b>${overdue}</b></span>`;
    $("#tasks tbody").innerHTML = M.tasks.map((task) => `<tr data-task="${task.id}" data-siren="${esc(task.siren_id)}" class="${task.overdue ? "overdue" : ""}">
        <td>${esc(planName(task.plan_id))}</td><td>${esc(task.siren_id)}</td>
        <td>${when(task.due_at)}${task.overdue ? ` <span class="badge-overdue">${esc(t("overdue"))}</span>` : ""}</td>
        <td>${canMaintain() ? `<button type="button" data-complete="${task.id}">${esc(t("complete"))}</button>` : ""}</td></tr>`).join("") ||
      `<tr><td colspan="4">${esc(t("no_tasks"))}</td></tr>`;
    $("#plans").innerHTML = M.plans.map((p) => `<li data-plan="${esc(p.id)}">${esc(name(p))} · ${esc(t("next"))} ${when(p.next)}
        ${canOperate() ? `<button type="button" data-run="${esc(p.id)}">${esc(t("run_round"))}</button>` : ""}</li>`).join("");
    const choices = [...state().sirens.keys()].sort();
    const chosen = $("#order-siren").value;
    $("#order-siren").innerHTML = choices.map((id) => `<option>${esc(id)}</option>`).join("");
    if (chosen) $("#order-siren").value = chosen;
  }

  function orderRow(o) {
    const me = state().user;
    const draft = M.drafts[o.id] || {};
    const moves = o.moves.map((m) => `<option value="${m}" ${draft.move === m ? "selected" : ""}>${esc(t("wo_" + m))}</option>`).join("");
    const take = !canOperate() && !o.assignee && ["open", "reopened"].includes(o.state)
      ? `<button type="button" data-take="${o.id}">${esc(t("take"))}</button>` : "";
    const mine = canOperate() || !o.assignee || o.assignee === me;
    const actions = canMaintain() && mine && (o.moves.length || take) ? `${take}
        <select data-move="${o.id}" aria-label="${esc(t("move_to"))}"><option value="">${esc(t("move_to"))}…</option>${moves}</select>
        ${canOperate() ? `<input data-assignee="${o.id}" size="10" aria-label="${esc(t("assignee"))}" placeholder="${esc(t("assignee"))}" value="${esc(draft.assignee ?? o.assignee ?? "")}">` : ""}
        <input data-note="${o.id}" size="16" aria-label="${esc(t("note"))}" placeholder="${esc(t("note"))}" value="${esc(draft.note || "")}">
        <button type="button" data-apply="${o.id}">${esc(t("apply"))}</button>` : "";
    const history = o.history.map((h) => `<li>${when(h.at)} ${esc(h.by)}: ${esc(h.to ? t("wo_" + h.to) : `→ ${h.assignee}`)} ${esc(h.note || "")}</li>`).join("");
    const evidence = o.evidence ? `<div class="evidence">${esc(t("evidence"))}: ${esc(t("col_faults"))} ${esc(o.evidence.faults.join(", ") || "—")}${o.evidence.silent_test ? ` · ${esc(t("silent_test"))} ${esc(t("r_" + o.evidence.silent_test.status))}` : ""}</div>` : "";
    return `<tr data-order="${o.id}" data-state="${o.state}" class="prio-${o.priority}">
      <td>#${o.id}</td><td>${esc(o.siren_id)}</td>
      <td><details><summary>${esc(o.cause)}</summary><ul class="history">${history}</ul>${evidence}</details></td>
      <td>${esc(t("prio_" + o.priority))}</td><td><span class="chip wo-${o.state}">${esc(t("wo_" + o.state))}</span></td>
      <td>${esc(o.assignee || "—")}</td><td>${when(o.due_at)}</td><td class="actions">${actions}<output data-order-error="${o.id}"></output></td></tr>`;
  }

  function renderTaskForm() {
    const task = M.completing;
    $("#task-form").hidden = !task;
    if (!task) return;
    $("#task-title").textContent = `${task.siren_id} — ${planName(task.plan_id)}`;
    $("#task-items").innerHTML = task.checklist.map((item) => `<tr data-item="${esc(item.id)}"><td>${esc(itemText(item))}</td>
      <td><select name="result:${esc(item.id)}" aria-label="${esc(itemText(item))}">${RESULTS.map((r) => `<option value="${r}">${esc(t("res_" + r))}</option>`).join("")}</select></td>
      <td><input name="note:${esc(item.id)}" aria-label="${esc(t("note"))}" placeholder="${esc(t("note"))}" maxlength="2000"></td></tr>`).join("");
  }

  async function apply(id, body) {
    try {
      await api(`/api/workorders/${id}`, { method: "PATCH", json: body });
      delete M.drafts[id];
      await refresh();
    } catch (error) {
      const out = document.querySelector(`[data-order-error="${id}"]`);
      if (out) out.textContent = error.message;
    }
  }

  function keepDraft(event) {
    const el = event.target;
    for (const key of ["move", "note", "assignee"]) {
      const id = el.dataset[key];
      if (id) M.drafts[id] = { ...(M.drafts[id] || {}), [key]: el.value };
    }
  }

  async function onOrdersClick(event) {
    const target = event.target;
    if (target.dataset.take) apply(target.dataset.take, { assignee: state().user, state: "assigned" });
    if (target.dataset.apply) {
      const id = target.dataset.apply, body = {};
      const move = document.querySelector(`[data-move="${id}"]`)?.value;
      const note = document.querySelector(`[data-note="${id}"]`)?.value.trim();
      const assignee = document.querySelector(`[data-assignee="${id}"]`)?.value.trim();
      if (move) body.state = move;
      if (note) body.note = note;
      const order = M.orders.find((o) => String(o.id) === id);
      if (assignee && assignee !== order?.assignee) body.assignee = assignee;
      if (Object.keys(body).length) apply(id, body);
    }
  }

  async function openOrder(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    try {
      await api("/api/workorders", { method: "POST", json: {
        siren: form.get("siren"), cause: form.get("cause"), priority: form.get("priority") } });
      event.target.reset(); $("#order-new-error").textContent = "";
      await refresh();
    } catch (error) { $("#order-new-error").textContent = error.message; }
  }

  async function completeTask(event) {
    event.preventDefault();
    const task = M.completing, form = new FormData(event.target);
    const items = Object.fromEntries(task.checklist.map((item) => [item.id, {
      result: form.get(`result:${item.id}`), note: form.get(`note:${item.id}`) || "" }]));
    try {
      const done = await api(`/api/inspections/tasks/${task.id}/complete`, { method: "POST",
        json: { items, notes: form.get("notes") || "" } });
      M.completing = null; renderTaskForm();
      $("#task-result").textContent = `${t("task_done")}: ${done.siren_id} (${done.completed_by})`;
      await refresh();
    } catch (error) { $("#task-result").textContent = error.message; }
  }

  async function onTasksClick(event) {
    const id = event.target.dataset.complete;
    if (!id) return;
    M.completing = M.tasks.find((x) => String(x.id) === id) || null;
    $("#task-result").textContent = "";
    renderTaskForm();
    $("#task-form").scrollIntoView({ block: "nearest" });
  }

  async function onPlansClick(event) {
    const id = event.target.dataset.run;
    if (!id) return;
    try { await api(`/api/inspections/plans/${encodeURIComponent(id)}/run`, { method: "POST" }); await refresh(); }
    catch (error) { $("#task-result").textContent = error.message; }
  }

  async function monthlyReport(kind) {
    const month = $("#report-month").value;
    if (!month) return;
    try {
      const body = await api(`/api/reports/maintenance.${kind}?month=${month}`);
      const url = URL.createObjectURL(new Blob([body], { type: kind === "csv" ? "text/csv" : "text/html" }));
      if (kind === "csv") {
        const a = document.createElement("a");
        a.href = url; a.download = `maintenance-${month}.csv`; a.click();
      } else window.open(url, "_blank");
      $("#report-error").textContent = "";
    } catch (error) { $("#report-error").textContent = error.message; }
  }

  // -- a siren's record and timeline, in its detail view ------------------------------------
  async function showSiren(id) {
    const box = $("#detail-maint");
    if (box.dataset.siren !== id) { box.innerHTML = ""; box.shown = ""; box.dataset.siren = id; }
    try {
      const [asset, timeline] = await Promise.all([
        api(`/api/assets/${encodeURIComponent(id)}`), api(`/api/sirens/${encodeURIComponent(id)}/timeline?limit=50`)]);
      if (state().detail?.id !== id) return;
      const fields = ASSET_FIELDS.map((f) => `<dt>${esc(t("asset_" + f))}</dt><dd data-asset="${f}">${esc(asset[f] ?? "—")}</dd>`).join("");
      const firmware = asset.device.values.firmware;
      const html = `<div class="asset"><h3>${esc(t("asset"))}</h3><dl>${fields}
          <dt>${esc(t("asset_firmware"))}</dt><dd data-asset="firmware">${esc(firmware ?? "—")}</dd></dl></div>
        <div class="timeline"><h3>${esc(t("timeline"))}</h3><ul id="timeline">${timeline.map((e) =>
          `<li data-kind="${e.kind}"><time title="${esc(e.at)}">${when(e.at)}</time> <span class="kind">${esc(t("tl_" + e.kind))}</span> ${esc(e.summary)}</li>`).join("") ||
          `<li>${esc(t("no_history"))}</li>`}</ul></div>`;
      if (box.shown !== html) { box.innerHTML = html; box.shown = html; }  // unchanged: left alone
    } catch (error) { box.textContent = error.message; }
  }

  $("#orders").addEventListener("click", onOrdersClick);
  $("#orders").addEventListener("input", keepDraft);
  $("#orders").addEventListener("change", keepDraft);
  $("#tasks").addEventListener("click", onTasksClick);
  $("#plans").addEventListener("click", onPlansClick);
  $("#order-new").addEventListener("submit", openOrder);
  $("#task-form").addEventListener("submit", completeTask);
  $("#task-cancel").addEventListener("click", () => { M.completing = null; renderTaskForm(); });
  $("#report-html").addEventListener("click", () => monthlyReport("html"));
  $("#report-csv").addEventListener("click", () => monthlyReport("csv"));
  const now = new Date();
  $("#report-month").value = `${now.getFullYear()}-${String(now.getMonth() + 1).padStart(2, "0")}`;

  return { refresh, refreshSoon, render, showSiren };
}
