/* charts.js: the last five minutes of every zone and peer, kept in the page
 * from its own polling (nginx keeps no history) and drawn as small SVG line
 * charts: requests/s, 4xx/s and 5xx/s, mean response time, and a vertical
 * marker where a peer changed state.  The x axis is the server's clock
 * (nowMsec of the JSON), so the health checker's timestamps line up with it. */
var Charts = (function () {
  "use strict";
  var WINDOW = 300000, W = 300, H = 100, SVGNS = "http://www.w3.org/2000/svg";
  var tracks = {};

  var ROWS = [
    { name: "rps", label: "req/s", lines: [{ field: "rps", cls: "l-rps" }] },
    { name: "err", label: "4xx/s 5xx/s",
      lines: [{ field: "r4", cls: "l-4xx" }, { field: "r5", cls: "l-5xx" }] },
    { name: "ms", label: "resp ms", lines: [{ field: "ms", cls: "l-ms" }] }
  ];

  function track(key) {
    if (!tracks[key]) { tracks[key] = { samples: [], markers: [], prev: null, seen: 0 }; }
    return tracks[key];
  }

  function trim(list, from) {
    while (list.length && list[0].t < from) { list.shift(); }
  }

  /* c = cumulative counters at server time t (ms): {req, r4, r5, msec, avg};
   * msec is the sum of response times (absent: avg, the module's average) */
  function sample(key, t, c) {
    var s = track(key), p = s.prev;
    s.prev = { t: t, c: c };
    s.seen = t;
    if (p && t > p.t && c.req >= p.c.req) {       // (a smaller count: a reset)
      var dt = (t - p.t) / 1000, dreq = c.req - p.c.req, ms = null;
      if (dreq > 0) {
        ms = (typeof c.msec === "number" && typeof p.c.msec === "number")
          ? Math.max(0, c.msec - p.c.msec) / dreq : (c.avg || 0);
      }
      s.samples.push({ t: t, rps: dreq / dt, r4: Math.max(0, c.r4 - p.c.r4) / dt,
                       r5: Math.max(0, c.r5 - p.c.r5) / dt, ms: ms });
    }
    trim(s.samples, t - WINDOW);
    trim(s.markers, t - WINDOW);
  }

  /* a state change of the peer behind key at server time t (ms) */
  function mark(key, t, to, why) {
    var s = track(key);
    for (var i = 0; i < s.markers.length; i++) {
      if (s.markers[i].to === to && Math.abs(s.markers[i].t - t) < 1500) { return; }
    }
    s.markers.push({ t: t, to: to, why: why || "" });
    s.seen = Math.max(s.seen, t);     // (a peer with no traffic counters)
    s.markers.sort(function (a, b) { return a.t - b.t; });
  }

  /* drop what was not seen for a whole window (deleted zones, old peers) */
  function forget(now) {
    Object.keys(tracks).forEach(function (k) {
      if (tracks[k].seen < now - WINDOW) { delete tracks[k]; }
    });
  }

  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs).forEach(function (a) { e.setAttribute(a, String(attrs[a])); });
    return e;
  }

  function num(v) {
    if (v === null || v === undefined) { return "-"; }
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function lineOf(samples, field, now, max) {
    var d = "", pen = "M", n = 0;
    samples.forEach(function (p) {
      var v = p[field];
      if (v === null || v === undefined) { pen = "M"; return; }
      var x = (p.t - (now - WINDOW)) / WINDOW * W;
      var y = H - 2 - v / max * (H - 6);
      d += pen + x.toFixed(1) + " " + y.toFixed(1) + " ";
      pen = "L";
      n++;
    });
    // the newest sample's value (null: no request in that second)
    var last = samples.length ? samples[samples.length - 1][field] : null;
    if (last === undefined) { last = null; }
    return { d: d.trim() || "M0 " + (H - 2), n: n, last: last };
  }

  function markerLine(m, now) {
    var x = ((m.t - (now - WINDOW)) / WINDOW * W).toFixed(1);
    var g = svg("g", { "class": "marker to-" + m.to.toLowerCase(), "data-to": m.to,
                       "data-time": Math.round(m.t) });
    g.appendChild(svg("line", { x1: x, x2: x, y1: 0, y2: H, "vector-effect": "non-scaling-stroke" }));
    var title = svg("title", {});
    title.textContent = m.to + " at " + new Date(m.t).toLocaleTimeString() +
      (m.why ? ": " + m.why : "");
    g.appendChild(title);
    return g;
  }

  function chartRow(row, s, now) {
    var peak = 0;
    s.samples.forEach(function (p) {
      row.lines.forEach(function (l) { if (p[l.field] > peak) { peak = p[l.field]; } });
    });
    var max = peak > 0 ? peak * 1.1 : 1;
    var box = document.createElement("div");
    box.className = "chart";
    var label = document.createElement("div");
    label.className = "chart-label";
    var pic = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none",
                           "data-series": row.name, role: "img" });
    pic.appendChild(svg("rect", { "class": "bg", x: 0, y: 0, width: W, height: H }));
    var values = [];
    row.lines.forEach(function (l) {
      var line = lineOf(s.samples, l.field, now, max);
      pic.appendChild(svg("path", { d: line.d, "class": l.cls, "data-points": line.n,
                                    "data-last": line.last === null ? "" : line.last,
                                    "vector-effect": "non-scaling-stroke" }));
      values.push(num(line.last));
    });
    s.markers.forEach(function (m) { pic.appendChild(markerLine(m, now)); });
    label.appendChild(document.createTextNode(row.label + " "));
    var b = document.createElement("b");
    b.textContent = values.join(" / ");
    label.appendChild(b);
    var top = document.createElement("span");
    top.className = "max";
    top.textContent = "max " + num(peak);
    label.appendChild(top);
    box.appendChild(label);
    box.appendChild(pic);
    return box;
  }

  /* the three charts of key, as one element */
  function draw(key, now) {
    var s = track(key), box = document.createElement("div");
    box.className = "charts";
    ROWS.forEach(function (row) { box.appendChild(chartRow(row, s, now)); });
    return box;
  }

  /* current rate of key (for choosing which zones get charts) */
  function rate(key) {
    var s = tracks[key];
    return s && s.samples.length ? s.samples[s.samples.length - 1].rps : 0;
  }

  /* current 5xx/s of key */
  function rate5(key) {
    var s = tracks[key];
    return s && s.samples.length ? s.samples[s.samples.length - 1].r5 : 0;
  }

  return { sample: sample, mark: mark, forget: forget, draw: draw, rate: rate, rate5: rate5, num: num,
           WINDOW: WINDOW };
})();
