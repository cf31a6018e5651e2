"""The daemon's landing page at `/`: the links an exporter's page has, the
host's container networks as a figure (the SVG of /topology?format=svg,
tracer/host/figure.py) and each container's current rates beside its node,
computed in the browser from two scrapes of the daemon's own metrics.

Links are relative, so the page works behind a proxy that adds a prefix.
"""

from __future__ import annotations

import html
import json

from tracer import __version__

RATES_EVERY_MS = 2000       # how often the page scrapes the metrics for rates
FIGURE_EVERY_MS = 30000     # how often it fetches the figure again (containers come and go)

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cntrace</title>
<style>
body { font-family: Helvetica, Arial, sans-serif; margin: 1em 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 0.2em; }
#main { display: flex; gap: 2em; align-items: flex-start; }
#figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
          vertical-align: middle; border: 1px solid #888; }
text.rate { font-size: 9px; fill: #1f5fbf; }
</style></head><body>
<h1>cntrace __VERSION__</h1>
<p><a href="__METRICS_HREF__">__METRICS__</a> Prometheus metrics &middot;
<a href="healthz">/healthz</a> &middot; topology as <a href="topology">JSON</a>,
<a href="topology?format=svg">SVG</a>, <a href="topology?format=dot">DOT</a></p>
<div id="main">
<div id="figure">loading the topology&hellip;</div>
<div><h2 style="font-size:1.1em">Rates</h2>
<table id="rates"><thead><tr><th>container</th><th>tx packets/s</th><th>rx packets/s</th>
<th>tx bytes/s</th><th>rx bytes/s</th></tr></thead><tbody></tbody></table>
<p id="status">waiting for two scrapes&hellip;</p></div>
</div>
<script>
"use strict";
const METRICS = __METRICS_JSON__;
const SAMPLE = /^cntrace_container_(packets|bytes)_total\\{([^}]*)\\} (\\S+)/;
const LABEL = /(\\w+)="((?:[^"\\\\]|\\\\.)*)"/g;
let last = null;

function parse(text) {
  const totals = {};
  for (const line of text.split("\\n")) {
    const m = SAMPLE.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of m[2].matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\\\(.)/g, "$1");
    const row = totals[labels.container] = totals[labels.container] || {};
    const key = m[1] + "_" + labels.direction;
    row[key] = (row[key] || 0) + parseFloat(m[3]);
  }
  return totals;
}

function human(x) {
  const units = ["", "k", "M", "G"];
  let i = 0;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  return (x >= 100 || i === 0 ? x.toFixed(0) : x.toFixed(1)) + units[i];
}

function node(name) { return document.getElementById("container-" + name); }

function annotate(name, text) {
  const g = node(name);
  if (!g) return;
  let label = g.querySelector("text.rate");
  if (!label) {
    const box = g.getBBox();
    label = document.createElementNS("http://www.w3.org/2000/svg", "text");
    label.setAttribute("class", "rate");
    label.setAttribute("x", box.x + 2);
    label.setAttribute("y", box.y + box.height + 10);
    g.appendChild(label);
  }
  label.textContent = text;
}

async function figure() {
  const where = document.getElementById("figure");
  try {
    const response = await fetch("topology?format=svg");
    const body = await response.text();
    if (!response.ok) throw new Error(body.trim());
    where.innerHTML = body;
    last = null;   // new nodes: annotate them from the next pair of scrapes
  } catch (e) {
    where.textContent = "no figure: " + e.message;
  }
}

async function rates() {
  const status = document.getElementById("status");
  try {
    const response = await fetch(METRICS);
    const now = { at: performance.now() / 1000, totals: parse(await response.text()) };
    if (last && now.at > last.at) {
      const dt = now.at - last.at;
      const rows = [];
      for (const name of Object.keys(now.totals).sort()) {
        const a = now.totals[name], b = last.totals[name] || {};
        const rate = k => Math.max(0, ((a[k] || 0) - (b[k] || 0)) / dt);
        const g = node(name);
        const shape = g && g.querySelector("path, polygon");
        const fill = shape ? shape.getAttribute("fill") : "#ffffff";
        rows.push("<tr><td><span class=\\"swatch\\" style=\\"background:" + fill + "\\"></span>" +
                  name.replace(/[<>&]/g, "") + "</td><td>" + human(rate("packets_tx")) +
                  "</td><td>" + human(rate("packets_rx")) + "</td><td>" +
                  human(rate("bytes_tx")) + "</td><td>" + human(rate("bytes_rx")) + "</td></tr>");
        annotate(name, "tx " + human(rate("bytes_tx")) + "B/s  rx " +
                 human(rate("bytes_rx")) + "B/s");
      }
      document.querySelector("#rates tbody").innerHTML = rows.join("");
      status.textContent = "rates over the last " + dt.toFixed(1) + " s";
    }
    last = now;
  } catch (e) {
    status.textContent = "cannot scrape " + METRICS + ": " + e.message;
  }
}

figure().then(rates);
setInterval(rates, __RATES_EVERY_MS__);
setInterval(figure, __FIGURE_EVERY_MS__);
</script>
</body></html>
"""


def render(telemetry_path: str) -> bytes:
    relative = telemetry_path.lstrip("/")
    page = (_PAGE.replace("__VERSION__", html.escape(__version__))
            .replace("__METRICS_HREF__", html.escape(relative))
            .replace("__METRICS__", html.escape(telemetry_path))
            .replace("__METRICS_JSON__", json.dumps(relative).replace("<", "\\u003c"))
            .replace("__RATES_EVERY_MS__", str(RATES_EVERY_MS))
            .replace("__FIGURE_EVERY_MS__", str(FIGURE_EVERY_MS)))
    return page.encode()
