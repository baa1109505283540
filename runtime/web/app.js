// Polls /state.json, shows the verdict and the frame it belongs to, draws the rolling plots.
// Plain DOM + canvas: no libraries, works offline on the station.
// The picture and the verdict always belong to the same frame: the page fetches frame.jpg?seq=N for
// the verdict of frame N, shows it only when the server answers with X-Frame-Seq N, and swaps the
// picture and the verdict in the same step. A frame the server no longer has leaves no picture.
"use strict";

const POLL_MS = 300;
let shownSeq = null;
let frameUrl = null;

async function fetchFrame(seq) {
  // -> {seq, url}: url is an object URL of frame seq's JPEG, or null when that exact frame is not available
  try {
    const r = await fetch("/frame.jpg?seq=" + seq, {cache: "no-store"});
    if (r.ok && r.headers.get("X-Frame-Seq") === String(seq)) {
      const url = URL.createObjectURL(await r.blob());
      const probe = new Image();
      probe.src = url;
      try { await probe.decode(); } catch (e) { URL.revokeObjectURL(url); return {seq: seq, url: null}; }
      return {seq: seq, url: url};  // decoded: it appears the moment render() shows the verdict
    }
  } catch (e) { /* shown as no picture */ }
  return {seq: seq, url: null};
}

function showFrame(frame) {
  const img = document.getElementById("frame");
  if (frameUrl) URL.revokeObjectURL(frameUrl);
  frameUrl = frame.url;
  if (frame.url) {
    img.src = frame.url;
    img.dataset.seq = String(frame.seq);
  } else {
    img.removeAttribute("src");  // never the previous frame's picture under this verdict
    img.dataset.seq = "";
  }
  shownSeq = frame.seq;
}

function text(id, value) { document.getElementById(id).textContent = value; }

function drawLevel(ctx, yv, w, pad, colour) {
  ctx.strokeStyle = colour; ctx.setLineDash([4, 4]); ctx.beginPath();
  ctx.moveTo(pad, yv); ctx.lineTo(w - 4, yv); ctx.stroke(); ctx.setLineDash([]);
}

function plot(canvas, values, opts) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  const finite = values.filter(v => v !== null);  // null: a score that was not a number (NG, not drawn)
  if (!finite.length) return;
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (opts.line !== undefined) { lo = Math.min(lo, opts.line); hi = Math.max(hi, opts.line); }
  if (opts.line2 !== undefined && opts.line2 !== null) { lo = Math.min(lo, opts.line2); hi = Math.max(hi, opts.line2); }
  if (hi <= lo) hi = lo + 1e-6;
  const x = i => pad + (i / Math.max(values.length - 1, 1)) * (w - pad - 4);
  const y = v => h - 14 - ((v - lo) / (hi - lo)) * (h - 24);
  ctx.fillStyle = "#9aa0a6"; ctx.font = "11px sans-serif";
  ctx.fillText(hi.toPrecision(3), 2, 12); ctx.fillText(lo.toPrecision(3), 2, h - 4);
  if (opts.line !== undefined) drawLevel(ctx, y(opts.line), w, pad, "#ff5a4f");
  if (opts.line2 !== undefined && opts.line2 !== null) drawLevel(ctx, y(opts.line2), w, pad, "#e0a030");
  ctx.strokeStyle = opts.color; ctx.lineWidth = 1.5; ctx.beginPath();
  let pen = false;  // a gap where a value is missing
  values.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    if (pen) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
    pen = true;
  });
  ctx.stroke();
  if (opts.marks) {  // NG red, REVIEW amber
    opts.marks.forEach((m, i) => {
      if (!m || values[i] === null) return;
      ctx.fillStyle = m === "REVIEW" ? "#e0a030" : "#ff5a4f";
      ctx.fillRect(x(i) - 2, y(values[i]) - 2, 4, 4);
    });
  }
}

function render(s, frame) {
  if (frame) showFrame(frame);
  const v = document.getElementById("verdict");
  v.textContent = s.verdict || "-";
  v.className = s.verdict || "";
  text("score", s.score !== null ? s.score.toPrecision(4) : (s.score_not_finite || "-"));
  text("threshold", s.threshold.toPrecision(4));
  text("review_threshold", s.review_threshold === null || s.review_threshold === undefined ? "-" : s.review_threshold.toPrecision(4));
  text("p_value", s.p_value === null || s.p_value === undefined ? "-" : s.p_value.toPrecision(3));
  const drift = document.getElementById("drift");
  if (s.drift) {
    drift.className = "on";
    drift.textContent = "DRIFT since frame " + s.drift.seq + ": " + s.drift.above + " of the last " + s.drift.window +
      " OK/REVIEW scores above the calibration's 95th percentile (expected about " +
      Math.round(s.drift.expected_rate * s.drift.window) + "); thresholds unchanged - check the line, register again if it changed";
  } else {
    drift.className = "";
    drift.textContent = "";
  }
  text("seq", s.seq === null ? "-" : s.seq);
  text("backend", s.backend);
  text("status", s.running ? "live" : "run finished");
  text("last_reject", s.last_reject ? "last rejected frame " + s.last_reject : "");
  const c = s.counters || {};
  const rows = [["processed", c.processed], ["OK", c.ok], ["REVIEW", c.review], ["NG", c.ng], ["rejected", c.rejected],
                ["drift alarms", c.drift_events],
                ["dropped", c.dropped], ["reconnects", c.reconnects], ["frames/s", c.fps],
                ["host-to-host ms", s.ms && s.ms.host_to_host !== undefined ? s.ms.host_to_host.toFixed(2) : "-"]];
  const line = s.line || {};  // the line adapters' counters (serve --trigger plc / --modbus / --opcua / --mqtt)
  if (line.state !== undefined) {
    rows.push(["PLC handshake", line.state], ["triggers", line.triggers], ["triggers refused", line.triggers_refused],
              ["acks without result", line.acks_without_result]);
  }
  for (const [name, block] of Object.entries(line)) {
    if (block === null || typeof block !== "object") continue;
    for (const [k, val] of Object.entries(block)) rows.push([name + " " + k.replace(/_/g, " "), val]);
  }
  document.getElementById("counters").innerHTML =
    rows.map(([k, val]) => `<tr><td class="k">${k}</td><td>${val === undefined ? "-" : val}</td></tr>`).join("");
  const hist = s.history;
  plot(document.getElementById("score_plot"), hist.score, {color: "#6ab0ff", line: s.threshold, line2: s.review_threshold,
       marks: hist.verdict.map(x => (x === "NG" || x === "REVIEW") ? x : null)});
  plot(document.getElementById("latency_plot"), hist.latency_ms, {color: "#8fd18f"});
  document.body.dataset.rendered = s.seq === null ? "" : String(s.seq);
  document.body.dataset.points = String(hist.score.length);
}

async function poll() {
  try {
    const r = await fetch("/state.json", {cache: "no-store"});
    const s = await r.json();
    // the frame first, then verdict and picture together: the header never runs ahead of the picture
    const frame = s.seq !== null && s.seq !== shownSeq ? await fetchFrame(s.seq) : null;
    render(s, frame);
  } catch (e) {
    text("status", "disconnected: " + e);
  }
  setTimeout(poll, POLL_MS);
}

poll();
