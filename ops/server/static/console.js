// Sluice console: the little JS it needs. The pressure page polls /v1/pressure (the session
// cookie authenticates reads) and draws the last five minutes; the dead-letter list gets a
// "select all" box. Everything else is plain HTML forms.
"use strict";

const HISTORY = 300; // samples kept: one per second, five minutes

function text(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value === null || value === undefined ? "-" : String(value);
}

function total(counts, outcomes) {
  let n = 0;
  for (const byOutcome of Object.values(counts || {})) {
    for (const o of outcomes) n += byOutcome[o] || 0;
  }
  return n;
}

function draw(canvas, samples) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  if (samples.length < 2) return;
  const series = [["depth", "#1f5fbf"], ["accept", "#2e8b57"], ["shed", "#c0392b"]];
  const top = Math.max(1, ...samples.map((s) => Math.max(s.depth, s.accept, s.shed)));
  const x = (i) => (i / (HISTORY - 1)) * w;
  const y = (v) => h - 4 - (v / top) * (h - 16);
  for (const [key, color] of series) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    const offset = HISTORY - samples.length;
    samples.forEach((s, i) => (i ? ctx.lineTo(x(i + offset), y(s[key])) : ctx.moveTo(x(i + offset), y(s[key]))));
    ctx.stroke();
  }
  ctx.fillStyle = "#555";
  ctx.fillText(String(Math.round(top)), 4, 12);
}

function pressurePage() {
  const canvas = document.getElementById("chart");
  const samples = [];
  let last = null;
  async function poll() {
    try {
      const r = await fetch("/v1/pressure", { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) { window.location = "/console/login"; return; }
      const v = await r.json();
      const level = document.getElementById("level");
      level.textContent = v.level;
      level.className = "level level-" + v.level;
      text("depth", v.depth);
      text("drain", v.drain_rate);
      for (const q of Object.keys(v.depths)) {
        text("depth-" + q, v.depths[q]);
        text("oldest-" + q, v.oldest_age_s[q]);
        text("wait-" + q, v.predicted_wait_s[q.toUpperCase()]);
      }
      const now = { at: Date.now() / 1000, accepted: total(v.submissions, ["accepted", "delayed"]),
                    shed: total(v.submissions, ["shed", "killed"]) };
      let accept = 0, shed = 0;
      if (last) {
        const dt = Math.max(0.001, now.at - last.at);
        accept = Math.max(0, (now.accepted - last.accepted) / dt);
        shed = Math.max(0, (now.shed - last.shed) / dt);
      }
      last = now;
      text("accept-rate", accept.toFixed(1));
      text("shed-rate", shed.toFixed(1));
      text("updated", "(live: " + new Date().toLocaleTimeString() + ")");
      samples.push({ depth: v.depth, accept, shed });
      if (samples.length > HISTORY) samples.shift();
      draw(canvas, samples);
    } catch (e) {
      text("updated", "(server unreachable: retrying)");
    }
  }
  poll();
  setInterval(poll, 1000);
}

function deadLettersPage() {
  const all = document.getElementById("select-all");
  if (!all) return;
  all.addEventListener("change", () => {
    for (const box of document.querySelectorAll('#selected input[name="ids"]')) box.checked = all.checked;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "pressure") pressurePage();
  if (page === "dead_letters") deadLettersPage();
});
