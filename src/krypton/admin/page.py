"""The status page at ``/``: one self-contained HTML file (no external assets).

Its script polls ``status.json`` every second and draws what each worker
reports: a title with its readiness, tables (``sections``: tenants and their
L3 versions and leases, uplink, outbox, connections, ...), and one latency
histogram summed over the workers — the requests of the last poll interval,
by bucket (the whole count since start while nothing is moving). Every value
is put in the page as text (``textContent``), never as markup.
"""

from __future__ import annotations

from typing import Final

PAGE: Final = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Krypton status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.2em 0 .3em}
h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.2em 0 .8em;background:#fff}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#eee}
.ready{color:#060;font-weight:bold}.unready{color:#a00;font-weight:bold}
#hist{display:flex;align-items:flex-end;height:160px;gap:6px;margin:1.8em 0 .3em;
  border-bottom:1px solid #888;max-width:760px}
.bar{flex:1;background:#4a7fb5;min-height:1px;position:relative}
.bar span{position:absolute;top:-1.3em;left:0;right:0;text-align:center;font-size:11px}
#labels{display:flex;gap:6px;max-width:760px}#labels div{flex:1;text-align:center;font-size:11px}
#note,#updated{color:#666;font-size:12px}
</style></head>
<body>
<h1 id="title">Krypton</h1>
<div id="updated">loading&hellip;</div>
<div id="workers"></div>
<h2 id="latency-title">Latency</h2>
<div id="hist"></div><div id="labels"></div>
<div id="note"></div>
<script>
"use strict";
var previous = null;
function el(tag, text, cls) {
  var e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function table(section) {
  var wrap = el("div"); wrap.className = "section";
  wrap.appendChild(el("h3", section.title));
  var t = el("table"); var head = el("tr");
  section.columns.forEach(function (c) { head.appendChild(el("th", c)); });
  t.appendChild(head);
  section.rows.forEach(function (row) {
    var tr = el("tr");
    row.forEach(function (v) { tr.appendChild(el("td", v)); });
    t.appendChild(tr);
  });
  if (!section.rows.length) {
    var tr = el("tr"); var td = el("td", "(none)"); td.colSpan = section.columns.length;
    tr.appendChild(td); t.appendChild(tr);
  }
  wrap.appendChild(t);
  return wrap;
}
function label(bound) {
  if (bound === null) return "> " + label(lastBound);
  return bound < 0.001 ? (bound * 1e6).toFixed(0) + " \\u00b5s" : (bound * 1e3) + " ms";
}
var lastBound = 0;
function totals(workers) {
  var sum = null, buckets = [], title = "Latency";
  workers.forEach(function (w) {
    var lat = w.latency; if (!lat) return;
    buckets = lat.buckets; title = lat.title;
    Object.keys(lat.operations).forEach(function (op) {
      var counts = lat.operations[op];
      if (sum === null) sum = counts.map(function () { return 0; });
      counts.forEach(function (n, i) { sum[i] += n; });
    });
  });
  var zeros = buckets.concat([0]).map(function () { return 0; });
  return {title: title, buckets: buckets, counts: sum || zeros};
}
function drawHistogram(now) {
  document.getElementById("latency-title").textContent = now.title;
  var shown = now.counts, what = "requests in the last interval";
  if (previous && previous.counts.length === now.counts.length) {
    shown = now.counts.map(function (n, i) { return n - previous.counts[i]; });
  }
  if (!shown.some(function (n) { return n > 0; })) {
    shown = now.counts; what = "requests since start (nothing in the last interval)";
  }
  previous = now;
  var max = Math.max.apply(null, shown.concat([1]));
  var hist = document.getElementById("hist"), labels = document.getElementById("labels");
  hist.textContent = ""; labels.textContent = "";
  lastBound = now.buckets.length ? now.buckets[now.buckets.length - 1] : 0;
  shown.forEach(function (n, i) {
    var bar = el("div", null, "bar");
    bar.style.height = (100 * n / max) + "%";
    bar.setAttribute("data-count", String(n));
    bar.appendChild(el("span", n));
    hist.appendChild(bar);
    var b = i < now.buckets.length ? now.buckets[i] : null;
    labels.appendChild(el("div", b === null ? label(null) : "\\u2264 " + label(b)));
  });
  document.getElementById("note").textContent = "bars: " + what + ", by latency bucket";
}
function render(data) {
  var workers = data.workers || [];
  var box = document.getElementById("workers");
  box.textContent = "";
  if (workers.length) document.getElementById("title").textContent = workers[0].title;
  workers.forEach(function (w) {
    var part = el("div"); part.className = "worker";
    var who = "pid " + w.pid;
    if (workers.length > 1) who = "worker " + w.worker + " (" + who + ")";
    part.appendChild(el("h2", who));
    part.appendChild(el("div", w.ready ? "ready" : "not ready: " + w.missing.join("; "),
                        w.ready ? "ready" : "unready"));
    (w.sections || []).forEach(function (s) { part.appendChild(table(s)); });
    box.appendChild(part);
  });
  drawHistogram(totals(workers));
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}
function poll() {
  fetch("status.json", {cache: "no-store"})
    .then(function (r) { return r.json(); })
    .then(render)
    .catch(function (e) { document.getElementById("updated").textContent = "no answer: " + e; })
    .then(function () { setTimeout(poll, 1000); });
}
poll();
</script>
</body></html>
"""
