/* bess-edge dashboard: hash-routed pages over /api/v1, polled every 2 s. No build step. */
"use strict";
const POLL_MS = 2000;
const RANGES = { "5m": 300e3, "1h": 3600e3, "6h": 6 * 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const FIELDS = {
  pack_voltage_v: "Pack voltage [V]", pack_current_a: "Current [A] (+ charging)", pack_power_w: "Power [W]",
  cell_voltage_min_v: "Lowest cell [V]", cell_voltage_max_v: "Highest cell [V]",
  cell_temperature_max_c: "Hottest sensor [°C]", bms_soc_pct: "BMS SOC [%]",
};
const state = { key: localStorage.getItem("bess-key") || "", me: null, timer: null, range: "1h",
  field: "pack_voltage_v", editing: null };
const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
const ago = (ms) => { if (!ms) return "–"; const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : new Date(ms).toLocaleString(); };
const when = (ms) => ms ? new Date(ms).toLocaleString() : "–";

class AuthError extends Error {}
async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  // Relative to the page, so the same files serve a gateway at / and a fleet site at /sites/<site>/.
  const r = await fetch(path.replace(/^\//, ""), { method: opts.method || "GET", headers,
    body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined });
  if (r.status === 401) throw new AuthError((await r.json()).detail);
  const data = r.status === 204 ? null : await r.json();
  if (!r.ok) {
    const d = data && data.detail;
    throw new Error(Array.isArray(d) ? d.map((x) => typeof x === "string" ? x : `${(x.loc || []).slice(1).join(".")}: ${x.msg}`).join("; ") : d || r.statusText);
  }
  return data;
}
function toast(text, isError = false) {
  const t = $("#toast"); t.textContent = text; t.className = isError ? "error" : ""; t.hidden = false;
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}
function can(role) { const rank = { viewer: 0, operator: 1, admin: 2 }; return state.me && rank[state.me.role] >= rank[role]; }

/* -- login ------------------------------------------------------------------------------ */
function showLogin(message) {
  clearTimeout(state.timer);
  const err = $("#login-error"); err.hidden = !message; err.textContent = message || "";
  $("#view").innerHTML = `<div class="panel"><h1>Sign in to see the site</h1><p class="muted">This dashboard needs an API key.</p></div>`;
  if (!$("#login-dialog").open) $("#login-dialog").showModal();
  $("#key").focus();
}
$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.key = $("#key").value.trim();
  try {
    state.me = await api("/api/v1/me");
  } catch (e) { showLogin(e instanceof AuthError ? "That key is unknown or revoked." : e.message); return; }
  localStorage.setItem("bess-key", state.key);
  $("#login-dialog").close(); $("#key").value = "";
  onLogin(); route();
});
$("#logout").addEventListener("click", () => { localStorage.removeItem("bess-key"); state.key = ""; state.me = null; onLogin(); showLogin(); });
function onLogin() {
  $("#who").textContent = state.me ? `${state.me.name} · ${state.me.role}` : "";
  $("#logout").hidden = !state.me;
  document.querySelectorAll("[data-role]").forEach((el) => { el.hidden = !can(el.dataset.role); });
}

/* -- router and polling ----------------------------------------------------------------- */
const pages = { "": overview, device: devicePage, alerts: alertsPage, thresholds: thresholdsPage, keys: keysPage };
function route() {
  clearTimeout(state.timer);
  const [name, arg] = location.hash.replace(/^#\/?/, "").split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === (name || "overview")));
  const page = pages[name] || overview;
  $("#view").innerHTML = "";
  const tick = async (first) => {
    try { await page(decodeURIComponent(arg || ""), first); await alertBadge(); }
    catch (e) { if (e instanceof AuthError) { state.me = null; onLogin(); showLogin("Your key was refused (expired or revoked): sign in again."); return; }
      toast(e.message, true); }
    state.timer = setTimeout(() => tick(false), POLL_MS);
  };
  tick(true);
}
window.addEventListener("hashchange", route);
async function alertBadge() {
  const active = await api("/api/v1/alerts?state=active&limit=1000");
  const b = $("#alert-count"); b.hidden = active.length === 0; b.textContent = active.length;
}

/* -- overview --------------------------------------------------------------------------- */
async function overview() {
  const devices = await api("/api/v1/devices");
  const cards = devices.map((d) => {
    const r = d.reading || {}, dg = d.diagnosis || {}, comms = d.state ? d.state.comms : "unknown";
    return `<div class="panel device-card" data-device="${esc(d.device)}" tabindex="0">
      <div class="row"><h2>${esc(d.device)}</h2><span class="badge ${esc(comms)}">${esc(comms)}</span></div>
      <div class="row"><div><span class="big soc">${num(dg.soc_pct, 1)}</span><span class="unit"> % SOC ± ${num(dg.soc_uncertainty_pct, 1)}</span></div>
      ${d.active_alerts ? `<span class="badge critical">${d.active_alerts} active alert${d.active_alerts > 1 ? "s" : ""}</span>` : `<span class="badge ok">no alerts</span>`}</div>
      <div class="kv">
        <div><span class="k">Power</span><span class="v">${num((r.pack_power_w ?? NaN) / 1000, 2)} kW</span></div>
        <div><span class="k">SOH</span><span class="v">${num(dg.soh_pct, 1)} %</span></div>
        <div><span class="k">Pack</span><span class="v">${num(r.pack_voltage_v, 1)} V · ${num(r.pack_current_a, 1)} A</span></div>
        <div><span class="k">Thermal risk</span><span class="v">${esc(dg.thermal_risk || "–")}</span></div>
        <div><span class="k">Cells</span><span class="v">${r.cell_count ?? "–"} · Δ ${num(((r.cell_voltage_max_v ?? NaN) - (r.cell_voltage_min_v ?? NaN)) * 1000, 0)} mV</span></div>
        <div><span class="k">Last reading</span><span class="v">${ago(r.ts_ms)}</span></div>
      </div></div>`;
  }).join("");
  $("#view").innerHTML = `<h1>Site overview</h1><div class="grid">${cards || '<p class="muted">No device has reported yet.</p>'}</div>`;
  document.querySelectorAll(".device-card").forEach((el) => el.addEventListener("click", () => { location.hash = `#/device/${encodeURIComponent(el.dataset.device)}`; }));
}

/* -- device ----------------------------------------------------------------------------- */
async function devicePage(device, first) {
  if (first) {
    $("#view").innerHTML = `<h1><a href="#/" class="muted">Overview</a> / <span id="dev-name">${esc(device)}</span> <span id="dev-comms" class="badge"></span></h1>
      <div class="two"><div class="panel"><div class="toolbar">
        <select id="field">${Object.entries(FIELDS).map(([k, v]) => `<option value="${k}">${esc(v)}</option>`).join("")}</select>
        ${Object.keys(RANGES).map((r) => `<button data-range="${r}">${r}</button>`).join("")}</div>
        <canvas id="trend" class="chart"></canvas><div class="legend">line: mean per interval · band: min–max</div></div>
      <div class="panel" id="diagnosis"></div></div>
      <div class="panel" style="margin-top:1rem"><div class="row"><h2>Cells</h2><span class="legend">
        <span class="key" style="background:var(--accent)"></span>cell voltage<span class="key" style="background:var(--weak)"></span>weak
        <span class="key" style="background:var(--hot)"></span>hot</span></div>
        <div id="cells" class="cells"></div><div id="cell-range" class="legend"></div>
        <h2 style="margin-top:1rem">Temperature sensors</h2><div id="temps" class="temps"></div></div>
      <div class="panel" style="margin-top:1rem"><h2>Estimated state of charge</h2><canvas id="soc-trend" class="chart"></canvas></div>`;
    $("#field").value = state.field;
    $("#field").addEventListener("change", () => { state.field = $("#field").value; route(); });
    document.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => { state.range = b.dataset.range; route(); }));
  }
  document.querySelectorAll("[data-range]").forEach((b) => b.classList.toggle("on", b.dataset.range === state.range));
  // The window ends on a bucket boundary, so every open page asks the same query and the
  // server computes it once per refresh for all of them.
  const points = 1000, step = Math.ceil(RANGES[state.range] / points);
  const enc = encodeURIComponent(device), until = Math.ceil((Date.now() + 1) / step) * step;
  const since = until - RANGES[state.range];
  const [d, trend, soc, cells] = await Promise.all([
    api(`/api/v1/devices/${enc}`),
    api(`/api/v1/devices/${enc}/readings?since_ms=${since}&until_ms=${until}&max_points=${points}&fields=${state.field}`),
    // SOC moves slowly and each diagnosis is a large document: 300 points are plenty.
    api(`/api/v1/devices/${enc}/diagnoses?since_ms=${since}&until_ms=${until}&max_points=300&fields=soc_pct`),
    api(`/api/v1/devices/${enc}/cells`).catch(() => null),
  ]);
  const comms = d.state ? d.state.comms : "unknown";
  const badge = $("#dev-comms"); badge.textContent = comms; badge.className = `badge ${comms}`;
  drawTrend($("#trend"), trend, { field: state.field });
  drawTrend($("#soc-trend"), soc, { field: "soc_pct", color: "#3fb950" });
  renderDiagnosis(d);
  if (cells) renderCells(cells);
}
// "value ± sigma" (the sigma left out where the estimator gives none yet), scaled and rounded.
const pm = (v, sigma, d = 1, scale = 1) =>
  `${num((v ?? NaN) * scale, d)}${Number.isFinite(sigma) ? ` ± ${num(sigma * scale, d)}` : ""}`;
function forecast(g) {
  const mid = g.soh_forecast_pct || [], lo = g.soh_forecast_low_pct || [], hi = g.soh_forecast_high_pct || [];
  if (!mid.length || mid[0] === null) return "–";
  return [1, 5, 10].map((y, i) => `${y} y ${num(mid[i], 0)} (${num(lo[i], 0)}–${num(hi[i], 0)})`).join(" · ") + " %";
}
function ocvSource(g) {
  const r = g.ocv_fit_residual_v;
  return g.ocv_source ? `${esc(g.ocv_source)}${Number.isFinite(r) ? ` (rests fit to ${num(r * 1000, 1)} mV)` : ""}` : "–";
}
function renderDiagnosis(d) {
  const g = d.diagnosis || {};
  const reasons = [...(g.thermal_risk_reasons || []), ...(g.anomaly_reasons || []), ...(g.quality_flags || []).map((q) => `data quality: ${q}`)];
  const sohSigma = g.soh_pct * g.capacity_uncertainty_ah / g.capacity_ah;
  $("#diagnosis").innerHTML = `<h2>Diagnosis</h2><div class="kv">
    <div><span class="k">SOC</span><span class="v" data-field="soc">${pm(g.soc_pct, g.soc_uncertainty_pct)} %</span></div>
    <div><span class="k">SOH (capacity)</span><span class="v" data-field="soh">${pm(g.soh_pct, sohSigma)} %</span></div>
    <div><span class="k">Capacity</span><span class="v" data-field="capacity">${pm(g.capacity_ah, g.capacity_uncertainty_ah)} Ah</span></div>
    <div><span class="k">SOH (energy)</span><span class="v" data-field="soh-energy">${pm(g.soh_energy_pct, g.soh_energy_uncertainty_pct)} %</span></div>
    <div><span class="k">Usable now</span><span class="v" data-field="usable">${pm(g.usable_capacity_ah, g.usable_capacity_uncertainty_ah)} Ah · ${pm(g.usable_energy_wh, g.usable_energy_uncertainty_wh, 2, 1e-3)} kWh</span></div>
    <div><span class="k">Balancing would recover</span><span class="v" data-field="recoverable">${num(g.recoverable_capacity_ah, 1)} Ah</span></div>
    <div><span class="k">SOH forecast (80 % band)</span><span class="v" data-field="forecast">${forecast(g)}</span></div>
    <div><span class="k">1-s pulse R0</span><span class="v" data-field="r0-pulse">${pm(g.r0_pulse_1s_ohm, g.r0_pulse_1s_uncertainty_ohm, 2, 1e3)} mΩ</span></div>
    <div><span class="k">Small-signal R0</span><span class="v" data-field="r0-small">${pm(g.r0_small_signal_ohm, NaN, 2, 1e3)} mΩ</span></div>
    <div><span class="k">OCV curve</span><span class="v" data-field="ocv">${ocvSource(g)}</span></div>
    <div><span class="k">Cycles (EFC)</span><span class="v">${num(g.equivalent_full_cycles, 1)}</span></div>
    <div><span class="k">Thermal risk</span><span class="v">${esc(g.thermal_risk || "–")}</span></div>
    <div><span class="k">Weak cells</span><span class="v">${(g.weak_cells || []).join(", ") || "none"}</span></div>
    <div><span class="k">Balancing</span><span class="v">${esc(g.balancing_recommendation || "–")}</span></div></div>
    <h2 style="margin-top:.8rem">Why</h2>${reasons.length ? `<ul class="reasons">${reasons.map((r) => `<li>${esc(r)}</li>`).join("")}</ul>` : '<p class="muted">Nothing unusual.</p>'}`;
}
function hotSensors(temps) {
  const vals = temps.filter((t) => t !== null).sort((a, b) => a - b);
  if (!vals.length) return new Set();
  const median = vals[Math.floor(vals.length / 2)];
  // Hot: 5 K above the string's median, or at 45 °C (the usual warning level of Li-ion racks).
  return new Set(temps.map((t, i) => (t !== null && (t >= median + 5 || t >= 45)) ? i : -1).filter((i) => i >= 0));
}
function renderCells(c) {
  const v = c.cell_voltage_v, vals = v.filter((x) => x !== null);
  const lo = Math.min(...vals), hi = Math.max(...vals), floor = lo - Math.max(0.01, (hi - lo) * 0.5);
  const weak = new Set([...(c.weak_cells || []), ...(c.anomalous_cells || [])]);
  const hot = hotSensors(c.cell_temperature_c);
  const perSensor = c.cell_temperature_c.length ? v.length / c.cell_temperature_c.length : 1;
  $("#cells").innerHTML = v.map((x, i) => {
    const h = x === null ? 2 : 8 + 92 * (x - floor) / Math.max(1e-6, hi - floor);
    const cls = weak.has(i) ? "weak" : hot.has(Math.floor(i / perSensor)) ? "hot" : "";
    return `<div class="cell ${cls}" data-index="${i}" style="height:${h.toFixed(1)}%" title="cell ${i}: ${x === null ? "no value" : x.toFixed(4) + " V"}${cls ? " (" + cls + ")" : ""}"></div>`;
  }).join("");
  $("#cell-range").textContent = `${v.length} cells · ${lo.toFixed(3)}–${hi.toFixed(3)} V · spread ${((hi - lo) * 1000).toFixed(0)} mV · ${ago(c.ts_ms)}`;
  const t = c.cell_temperature_c, tv = t.filter((x) => x !== null), tlo = Math.min(...tv), thi = Math.max(...tv, tlo + 1);
  $("#temps").innerHTML = t.map((x, i) => {
    const f = x === null ? 0 : (x - tlo) / (thi - tlo), hue = 210 - 210 * f;
    return `<div class="temp ${hot.has(i) ? "hot" : ""}" data-sensor="${i}" style="background:hsl(${hue.toFixed(0)},70%,55%)" title="sensor ${i}: ${x === null ? "no value" : x.toFixed(1) + " °C"}">${x === null ? "–" : x.toFixed(0)}</div>`;
  }).join("");
}

/* -- alerts ----------------------------------------------------------------------------- */
async function alertsPage(_, first) {
  const [active, history] = await Promise.all([api("/api/v1/alerts?state=active"), api("/api/v1/alerts?limit=50")]);
  const row = (a, withAck) => {
    const acked = a.acked_ts_ms ? `<span class="badge ok acked">acknowledged by ${esc(a.acked_by)}</span>${a.ack_note ? ` <span class="muted">${esc(a.ack_note)}</span>` : ""}` : "";
    const ack = withAck && !a.acked_ts_ms ? `<button class="ack" data-id="${a.id}" ${can("operator") ? "" : 'disabled title="acknowledging needs an operator key"'}>Acknowledge</button>` : "";
    return `<tr data-alert-id="${a.id}"><td>#${a.id}</td><td><span class="badge ${esc(a.severity)}">${esc(a.severity)}</span></td>
      <td>${esc(a.device)}${a.cell !== null ? ` cell ${a.cell}` : ""}</td><td>${esc(a.rule)}<div class="msg muted">${esc(a.message)}</div></td>
      <td class="hide-phone">${when(a.raised_ts_ms)}</td><td>${a.state === "cleared" ? `cleared ${when(a.cleared_ts_ms)}` : ""} ${acked} ${ack}</td></tr>`;
  };
  const table = (rows, withAck) => `<div class="scroll"><table><thead><tr><th>#</th><th>Severity</th><th>Where</th><th>Rule</th><th class="hide-phone">Raised</th><th>State</th></tr></thead><tbody>${rows.map((a) => row(a, withAck)).join("")}</tbody></table></div>`;
  $("#view").innerHTML = `<h1>Alerts</h1><div class="panel" id="active-alerts"><h2>Active (${active.length})</h2>${active.length ? table(active, true) : '<p class="muted">No active alert.</p>'}</div>
    <div class="panel" style="margin-top:1rem"><h2>History</h2>${table(history, false)}</div>`;
  document.querySelectorAll("button.ack").forEach((b) => b.addEventListener("click", () => window.bess.ack(Number(b.dataset.id))));
}
async function ack(id) {
  try {
    const r = await api(`/api/v1/alerts/${id}/ack`, { method: "POST", body: {} });
    toast(r.request.result === "acknowledged" ? `Alert #${id} acknowledged` : `Alert #${id}: queued for the daemon`);
  } catch (e) { toast(`Acknowledge refused: ${e.message}`, true); }
  route();
}

/* -- thresholds ------------------------------------------------------------------------- */
async function thresholdsPage(_, first) {
  if (!first && state.editing !== null) return; // do not wipe a form being filled in
  const rules = await api("/api/v1/thresholds");
  const edit = can("operator");
  $("#view").innerHTML = `<h1>Alert thresholds</h1>${edit ? `<div class="panel"><h2 id="rule-form-title">Add a rule</h2>
    <form id="rule-form" class="inline"><input name="name" placeholder="name" required><input name="metric" placeholder="metric (e.g. cell_temperature_c)" style="width:15rem" required>
    <select name="dir"><option>above</option><option>below</option></select><input name="level" type="number" step="any" placeholder="level" required>
    <input name="clear" type="number" step="any" placeholder="clear at (optional)"><input name="for_s" type="number" step="any" min="0" placeholder="for s">
    <select name="severity"><option>warning</option><option>critical</option><option>info</option></select>
    <button class="primary" type="submit">Save</button><button type="button" id="rule-cancel">Clear</button></form>
    <p class="legend">Rules from the config file are edited there; rules saved here go to the API's rule file and the daemon reloads them.</p></div>` : ""}
    <div class="panel" style="margin-top:1rem"><div class="scroll"><table><thead><tr><th>Name</th><th>Metric</th><th>Level</th><th class="hide-phone">Clear / for</th><th>Severity</th><th>Source</th><th></th></tr></thead><tbody>
    ${rules.map(({ source, rule: r }) => `<tr data-rule="${esc(r.name)}"><td>${esc(r.name)}</td><td>${esc(r.metric)}</td><td>${r.above !== undefined ? "&gt; " + r.above : "&lt; " + r.below}</td>
      <td class="hide-phone">${r.clear ?? "–"} / ${r.for_s} s</td><td><span class="badge ${esc(r.severity)}">${esc(r.severity)}</span></td><td>${esc(source)}</td>
      <td>${edit && source !== "config" ? `<button class="edit" data-name="${esc(r.name)}">Edit</button>` : ""} ${edit && source === "api" ? `<button class="del" data-name="${esc(r.name)}">Delete</button>` : ""}</td></tr>`).join("")}
    </tbody></table></div></div>`;
  if (!edit) return;
  const form = $("#rule-form");
  const byName = Object.fromEntries(rules.map((x) => [x.rule.name, x.rule]));
  form.addEventListener("input", () => { state.editing = state.editing ?? ""; });
  $("#rule-cancel").addEventListener("click", () => { state.editing = null; route(); });
  document.querySelectorAll("button.edit").forEach((b) => b.addEventListener("click", () => {
    const r = byName[b.dataset.name]; state.editing = r.name;
    form.name.value = r.name; form.name.readOnly = true; form.metric.value = r.metric;
    form.dir.value = r.above !== undefined ? "above" : "below"; form.level.value = r.above ?? r.below;
    form.clear.value = r.clear ?? ""; form.for_s.value = r.for_s; form.severity.value = r.severity;
    $("#rule-form-title").textContent = `Edit ${r.name}`;
  }));
  document.querySelectorAll("button.del").forEach((b) => b.addEventListener("click", async () => {
    if (!confirm(`Delete rule ${b.dataset.name}?`)) return;
    try { const r = await api(`/api/v1/thresholds/${encodeURIComponent(b.dataset.name)}`, { method: "DELETE" }); toast(`Deleted; ${r.reload}`); }
    catch (e) { toast(e.message, true); }
    route();
  }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const base = state.editing ? { ...byName[state.editing] } : {};
    delete base.above; delete base.below; delete base.clear;
    const rule = { ...base, name: form.name.value, metric: form.metric.value, severity: form.severity.value, [form.dir.value]: Number(form.level.value) };
    if (form.clear.value !== "") rule.clear = Number(form.clear.value);
    if (form.for_s.value !== "") rule.for_s = Number(form.for_s.value);
    try {
      const exists = state.editing && byName[state.editing];
      const r = await api(exists ? `/api/v1/thresholds/${encodeURIComponent(rule.name)}` : "/api/v1/thresholds", { method: exists ? "PUT" : "POST", body: rule });
      toast(`Saved ${rule.name}; ${r.reload}`); state.editing = null; route();
    } catch (e) { toast(e.message, true); }
  });
}

/* -- keys (admin) ----------------------------------------------------------------------- */
async function keysPage(_, first) {
  if (!first) return; // static until changed
  if (!can("admin")) { $("#view").innerHTML = `<div class="panel"><h1>API keys</h1><p class="muted">Managing keys needs an admin key.</p></div>`; return; }
  const keys = await api("/api/v1/keys");
  $("#view").innerHTML = `<h1>API keys</h1><div class="panel"><h2>New key</h2><form id="key-form" class="inline">
    <input name="name" placeholder="name (who holds it)" required><select name="role"><option>viewer</option><option>operator</option><option>admin</option></select>
    <button class="primary" type="submit">Create</button></form><div id="new-key"></div></div>
    <div class="panel" style="margin-top:1rem"><table><thead><tr><th>Name</th><th>Role</th><th>Key ends</th><th class="hide-phone">Created</th><th></th></tr></thead><tbody>
    ${keys.map((k) => `<tr><td>${esc(k.name)}</td><td>${esc(k.role)}</td><td>…${esc(k.key_hint)}</td><td class="hide-phone">${when(k.created_ts_ms)}</td>
      <td>${k.name === state.me.name ? '<span class="muted">this key</span>' : `<button class="revoke" data-name="${esc(k.name)}">Revoke</button>`}</td></tr>`).join("")}</tbody></table></div>`;
  $("#key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault(); const f = ev.target;
    try {
      const k = await api("/api/v1/keys", { method: "POST", body: { name: f.name.value, role: f.role.value } });
      await keysPage("", true);
      $("#new-key").innerHTML = `<p>Key for <b>${esc(k.name)}</b> (${esc(k.role)}), shown only now:</p><div class="created-key">${esc(k.key)}</div>`;
    } catch (e) { toast(e.message, true); }
  });
  document.querySelectorAll("button.revoke").forEach((b) => b.addEventListener("click", async () => {
    if (!confirm(`Revoke key ${b.dataset.name}? Whoever holds it loses access at once.`)) return;
    try { await api(`/api/v1/keys/${encodeURIComponent(b.dataset.name)}`, { method: "DELETE" }); toast(`Revoked ${b.dataset.name}`); }
    catch (e) { toast(e.message, true); }
    keysPage("", true);
  }));
}

window.bess = { ack };
(async () => {
  if (!state.key) { showLogin(); return; }
  try { state.me = await api("/api/v1/me"); onLogin(); route(); }
  catch (e) { showLogin(e instanceof AuthError ? "Your saved key was refused (expired or revoked): sign in again." : e.message); }
})();
