"""The device page: `adtk serve --http` answers GET / with one HTML page (inline CSS and JS, no build step, no
external asset: it works on a line with no internet) that polls the daemon's JSON feed once a second.

    GET /                       the page: model and threshold, live score timeline, counters, refused model
                                swaps, the last anomalous frames with their overlays
    GET /api/state?since=ID     {"status", "model_update" (the refusal /health reports, or null), "model",
                                 "threshold", "counters", "refused" (earlier refusals), "scores" (newer than
                                 frame ID), "anomalous", "signature_required"}
    GET /api/overlay/ID.png     the overlay of a kept anomalous frame (runtime/overlay.py)

The routes are added beside the API's own (http_api.py asks `routes.get(path, query)` before answering 404),
so this module holds the page and its feed and nothing of the server's plumbing.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs

from adtk.runtime.daemon.live_feed import LiveFeed

_OVERLAY_PATH = re.compile(r"^/api/overlay/(\d{1,18})\.png$")  # a frame id; longer is no id (int() limits)


class DevicePage:
    def __init__(self, service, feed: LiveFeed):
        self.service, self.feed = service, feed

    def get(self, path: str, query: str = ""):
        """-> (status, body (dict for JSON, bytes otherwise), content type) or None when the path is not ours."""
        if path in ("/", "/index.html"):
            return 200, PAGE_HTML.encode("utf-8"), "text/html; charset=utf-8"
        if path == "/api/state":
            try:
                since = int(parse_qs(query).get("since", ["-1"])[0])
            except ValueError:
                return 400, {"error": "since must be a frame id (an integer)"}, "application/json"
            return 200, self.state(since), "application/json"
        match = _OVERLAY_PATH.match(path)
        if match:
            png = self.feed.overlay_png(int(match.group(1)))
            if png is None:
                return 404, {"error": f"frame {match.group(1)} is not among the last anomalous frames kept"}, \
                    "application/json"
            return 200, png, "image/png"
        return None

    def state(self, since: int = -1) -> dict:
        service = self.service
        detector = service.detector
        manifest = detector.manifest
        update = service.model_update  # the newest candidate's refusal while an older model is served, else None
        return {
            "status": service.status,  # as GET /health says it
            "source_down": service.source_down,
            "model_update": update,
            "signature_required": service.public_key is not None,
            "model": {"path": str(service.model_path), "sha256": detector.artefact.sha256,
                      "method": manifest["method"]["name"], "model_size_px": manifest["input"]["model_size_px"],
                      "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(service.model_loaded_at_s)),
                      "raw_threshold": detector.threshold,
                      "calibration": manifest["calibration"].get("method")},
            "threshold": 0.5,  # every artefact's scores are normalised so that 0.5 is its threshold
            "counters": service.metrics.snapshot(),
            "refused": [{"path": path, "reason": reason} for path, reason in service.refused_models()[-5:]],
            "scores": self.feed.scores_since(since),
            "anomalous": self.feed.anomalous(),
        }


# One page, kept short. Plain DOM and a <canvas>: no framework to fetch, nothing to build.
PAGE_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>adtk device</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{background:#263238;color:#fff;padding:10px 16px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
.pill{padding:2px 10px;border-radius:10px;background:#2e7d32}.pill.bad{background:#c62828}
main{padding:12px 16px;display:grid;grid-template-columns:minmax(320px,2fr) minmax(240px,1fr);gap:16px}
section{background:#fff;border-radius:6px;padding:10px 14px;box-shadow:0 1px 2px #0002}
h2{font-size:15px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:2px 6px;border-bottom:1px solid #eee;font-size:13px}
td.n{text-align:right;font-variant-numeric:tabular-nums}
canvas{width:100%;height:220px;display:block}
#refused{display:none;background:#ffebee;border:2px solid #c62828}#refused li{font-size:13px;margin:4px 0}
#frames{display:flex;gap:10px;flex-wrap:wrap}#frames figure{margin:0;width:260px}
#frames img{width:260px;height:220px;object-fit:contain;background:#263238;display:block}
#frames figcaption{font-size:12px;color:#555}
.mono{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
</style></head><body>
<header><h1>adtk</h1><span id="status" class="pill">connecting</span>
<span>model <b id="method">?</b> <span class="mono" id="sha"></span></span>
<span>threshold <b>score 0.5</b> (raw <span id="raw"></span>)</span><span id="last"></span></header>
<main>
<section style="grid-column:1/-1" id="refused"><h2>Model update refused</h2><p id="refused-now"></p>
<p>The model above is still being served.</p><div id="refused-earlier"><p>Earlier refusals:</p><ul id="refused-list"></ul></div></section>
<section><h2>Scores (last frames; dashed line = threshold 0.5)</h2><canvas id="timeline" width="900" height="220"></canvas></section>
<section><h2>Counters</h2><table id="counters"></table><h2>Model</h2><table id="model"></table></section>
<section style="grid-column:1/-1"><h2>Last anomalous frames</h2><div id="frames"><p>none yet</p></div></section>
</main>
<script>
"use strict";
const scores = []; let since = -1; const shownFrames = new Map();
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
function fillTable(id, rows) {
  const table = document.getElementById(id); table.replaceChildren();
  for (const [k, v] of rows) { const tr = el("tr"); tr.append(el("th", k), el("td", String(v), "n")); table.append(tr); }
}
function draw() {
  const canvas = document.getElementById("timeline"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h); ctx.font = "12px sans-serif"; ctx.fillStyle = "#666";
  for (const v of [0, 0.5, 1]) ctx.fillText(v.toFixed(1), 0, pad + (1 - v) * (h - 2 * pad) + 4);
  const y = v => pad + (1 - v) * (h - 2 * pad);
  ctx.strokeStyle = "#444"; ctx.setLineDash([6, 4]); ctx.beginPath(); ctx.moveTo(pad, y(0.5)); ctx.lineTo(w, y(0.5)); ctx.stroke(); ctx.setLineDash([]);
  const shown = scores.slice(-300), dx = (w - pad) / Math.max(1, shown.length - 1);
  ctx.strokeStyle = "#90a4ae"; ctx.beginPath();
  shown.forEach((s, i) => { const x = pad + i * dx; i ? ctx.lineTo(x, y(s.score)) : ctx.moveTo(x, y(s.score)); }); ctx.stroke();
  shown.forEach((s, i) => { ctx.fillStyle = s.label ? "#c62828" : "#2e7d32"; ctx.beginPath(); ctx.arc(pad + i * dx, y(s.score), 3, 0, 7); ctx.fill(); });
}
function render(state) {
  const status = document.getElementById("status");
  status.textContent = state.status; status.className = "pill" + (state.status === "ok" ? "" : " bad");
  document.getElementById("method").textContent = state.model.method;
  document.getElementById("sha").textContent = state.model.sha256.slice(0, 12);
  document.getElementById("raw").textContent = Number(state.model.raw_threshold).toPrecision(5);
  for (const s of state.scores) { scores.push(s); since = Math.max(since, s.frame_id); }
  if (scores.length > 600) scores.splice(0, scores.length - 600);
  const last = scores[scores.length - 1];
  document.getElementById("last").textContent = last ? `last frame ${last.frame_id}: score ${last.score.toFixed(3)} ${last.label ? "ANOMALOUS" : "good"}` : "no frames scored yet";
  const c = state.counters;
  fillTable("counters", [["frames scored", c.frames_scored], ["anomalous", c.frames_anomalous], ["dropped", c.frames_dropped],
    ["undecodable", c.frames_undecodable], ["scoring errors", c.scoring_errors], ["model swaps", c.model_swaps],
    ["swaps refused", c.model_swaps_refused]]);
  fillTable("model", [["path", state.model.path], ["loaded", state.model.loaded_at], ["size", state.model.model_size_px.join(" x ")],
    ["calibration", state.model.calibration], ["signature required", state.signature_required ? "yes" : "no"]]);
  const refused = document.getElementById("refused"), list = document.getElementById("refused-list");
  const update = state.model_update;
  refused.style.display = update ? "block" : "none"; list.replaceChildren();
  document.getElementById("refused-now").textContent = update ? `${update.at}: ${update.reason}` : "";
  for (const r of state.refused.slice().reverse()) if (!update || r.reason !== update.reason) list.append(el("li", r.reason));
  document.getElementById("refused-earlier").style.display = list.children.length ? "block" : "none";
  const frames = document.getElementById("frames");
  if (state.anomalous.length) {
    const wanted = new Set(state.anomalous.map(a => a.frame_id));
    for (const [id, fig] of shownFrames) if (!wanted.has(id)) { fig.remove(); shownFrames.delete(id); }
    frames.querySelector("p")?.remove();
    for (const a of state.anomalous.slice().reverse()) {
      if (shownFrames.has(a.frame_id)) continue;
      const fig = el("figure"), img = el("img"); img.alt = `frame ${a.frame_id}`; img.src = `/api/overlay/${a.frame_id}.png`;
      fig.append(img, el("figcaption", `frame ${a.frame_id} · score ${a.score.toFixed(3)} · ${a.time} · ${a.source}`));
      frames.prepend(fig); shownFrames.set(a.frame_id, fig);
    }
  }
  draw();
}
async function poll() {
  try {
    const response = await fetch(`/api/state?since=${since}`, {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (error) {
    const status = document.getElementById("status"); status.textContent = `daemon unreachable (${error.message})`; status.className = "pill bad";
  }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""
