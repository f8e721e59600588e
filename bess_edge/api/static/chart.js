/* A small canvas trend chart: mean line over a min..max band, time axis, no dependencies. */
"use strict";
window.drawTrend = function (canvas, series, opts) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const muted = css.getPropertyValue("--muted").trim(), line = css.getPropertyValue("--line").trim();
  const color = opts.color || css.getPropertyValue("--accent").trim();
  const pad = { l: 52, r: 10, t: 10, b: 24 };
  const xs = series.ts_ms, f = series.fields[opts.field];
  g.font = "11px system-ui, sans-serif"; g.fillStyle = muted;
  if (!f || xs.length === 0) { g.fillText("no data in this range", pad.l + 10, h / 2); return; }
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < xs.length; i++) {
    if (f.min[i] !== null) lo = Math.min(lo, f.min[i]);
    if (f.max[i] !== null) hi = Math.max(hi, f.max[i]);
  }
  if (!isFinite(lo)) { g.fillText("no values in this range", pad.l + 10, h / 2); return; }
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const span = hi - lo; lo -= span * 0.05; hi += span * 0.05;
  const x0 = series.since_ms, x1 = series.until_ms;
  const X = (t) => pad.l + (t - x0) / (x1 - x0) * (w - pad.l - pad.r);
  const Y = (v) => pad.t + (hi - v) / (hi - lo) * (h - pad.t - pad.b);
  g.strokeStyle = line; g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4, y = Y(v);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(fmt(v), 4, y + 4);
  }
  const fmtT = (t) => {
    const d = new Date(t);
    return (x1 - x0 > 2 * 86400e3) ? `${d.getMonth() + 1}/${d.getDate()} ${String(d.getHours()).padStart(2, "0")}h`
      : `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  };
  for (let k = 0; k <= 4; k++) {
    const t = x0 + (x1 - x0) * k / 4;
    g.fillText(fmtT(t), Math.min(X(t) - 14, w - 44), h - 6);
  }
  const half = series.bucket_ms / 2;
  g.fillStyle = color + "33"; g.beginPath();
  let started = false;
  for (let i = 0; i < xs.length; i++) if (f.max[i] !== null) {
    const x = X(xs[i] + half); started ? g.lineTo(x, Y(f.max[i])) : g.moveTo(x, Y(f.max[i])); started = true;
  }
  for (let i = xs.length - 1; i >= 0; i--) if (f.min[i] !== null) g.lineTo(X(xs[i] + half), Y(f.min[i]));
  g.closePath(); g.fill();
  g.strokeStyle = color; g.lineWidth = 1.6; g.beginPath(); started = false;
  for (let i = 0; i < xs.length; i++) {
    if (f.mean[i] === null) { started = false; continue; }
    const gap = i > 0 && xs[i] - xs[i - 1] > series.bucket_ms * 3;
    const x = X(xs[i] + half), y = Y(f.mean[i]);
    (started && !gap) ? g.lineTo(x, y) : g.moveTo(x, y); started = true;
  }
  g.stroke();
  function fmt(v) { const a = Math.abs(v); return a >= 1000 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(3); }
};
