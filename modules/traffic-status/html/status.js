/* status.js: polls <base>/format/json (traffic) and, when the config serves
 * it, <base>/health.json (the health checker: the shape of
 * hc.status_json()) every second; renders the tables, feeds Charts and
 * draws the cards.  Values are inserted as text, never as HTML: server
 * names come from Host headers. */
(function () {
  "use strict";
  /* the page's own location, as a path of this origin only: nginx merges
   * slashes, so "//evil.example/" reaches this page, and a URL built from it
   * as is would be protocol-relative (another host's data) */
  function ownPath(suffix) {
    var path = location.pathname.replace(/\/{2,}/g, "/").replace(/\/+$/, "")
      .replace(/\/format\/html$/, "") + suffix;
    var u = new URL(path, location.origin);
    if (u.origin !== location.origin || path.charAt(0) !== "/") {
      throw new Error("refusing a data source outside this origin: " + path);
    }
    return u.pathname;
  }
  var url = ownPath("/format/json"), healthUrl = ownPath("/health.json");
  var HEALTH_RETRY = 30000, ZONE_CARDS = 12, PEER_CARDS = 32, NEW_FOR = 60000;
  var prev = null, prevAt = 0, updates = 0;
  var health = null, healthRetryAt = 0, peerStates = {};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function bytes(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    n = n || 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function ago(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) { return s + "s"; }
    if (s < 3600) { return Math.floor(s / 60) + "m " + (s % 60) + "s"; }
    if (s < 172800) { return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m"; }
    return Math.floor(s / 86400) + "d";
  }
  function head(table, cols) {
    var tr = el("tr");
    cols.forEach(function (c, i) { tr.appendChild(el("th", i ? "" : "k", c)); });
    table.appendChild(tr);
  }
  function wrapped(table) {
    var w = el("div", "tablewrap");
    w.appendChild(table);
    return w;
  }
  function rate(key, count, dt, last) {
    if (!last || last[key] === undefined || dt <= 0) { return "-"; }
    return Math.max(0, (count - last[key]) * 1000 / dt).toFixed(1);
  }
  function text(id, s) { document.getElementById(id).textContent = s; }

  var zoneCols = ["Zone", "Requests", "Req/s", "Time (ms)", "1xx", "2xx", "3xx", "4xx", "5xx",
                  "In", "Out", "Hit", "Miss"];
  var caching = false;        /* Hit / Miss columns only when a cache exists */
  function zoneHead(table) { head(table, caching ? zoneCols : zoneCols.slice(0, 11)); }
  function zoneRow(name, z, cls, key, dt, last) {
    var tr = el("tr", cls), r = z.responses || {};
    tr.setAttribute("data-zone", name);
    var cells = [name, z.requestCounter, rate(key, z.requestCounter, dt, last), z.requestMsec,
                 r["1xx"], r["2xx"], r["3xx"], r["4xx"], r["5xx"], bytes(z.inBytes),
                 bytes(z.outBytes)];
    (caching ? cells.concat([r.hit, r.miss]) : cells).forEach(function (v, i) {
      var td = el("td", i ? (i === 1 ? "requests" : "") : "k", v);
      if (i === 0) { td.title = name; }
      tr.appendChild(td);
    });
    return tr;
  }
  function counters(count, r, msecCounter, avg) {
    r = r || {};
    return { req: count || 0, r4: r["4xx"] || 0, r5: r["5xx"] || 0, msec: msecCounter, avg: avg };
  }
  function card(kind, key, title, now, trackKey) {
    var c = el("div", "card");
    c.setAttribute("data-card", kind);
    c.setAttribute("data-key", key);
    var h = el("div", "card-head");
    h.appendChild(el("span", "name", title)).title = title;
    c.appendChild(h);
    c.body = function () { c.appendChild(Charts.draw(trackKey, now)); return c; };
    return c;
  }

  function renderHeader(d) {
    text("host", d.hostName);
    text("version", "nginx " + d.nginxVersion + " / " + d.moduleVersion);
    var c = d.connections || {};
    text("conns", "connections: active " + c.active + ", reading " + c.reading + ", writing " +
         c.writing + ", waiting " + c.waiting + ", accepted " + c.accepted + ", requests " +
         c.requests);
    var s = d.sharedZones || {};
    var dropped = s.droppedNodes || {};
    text("shm", "zone " + s.name + ": " + bytes(s.usedSize) + " in " + s.usedNode +
         " entries, " + bytes(s.freeSize) + " free of " + bytes(s.maxSize) +
         ((dropped.zoneFull || dropped.maxNode || dropped.evicted)
          ? ", dropped " + (dropped.zoneFull + dropped.maxNode) + ", evicted " + dropped.evicted
          : ""));
    text("health", health ? "health checker: on" : "health checker: not served");
  }

  function renderServers(d, now, dt, last, seen) {
    var t = document.getElementById("serverZones"), zones = d.serverZones || {};
    var names = Object.keys(zones), sum = names[names.length - 1];
    t.textContent = "";
    zoneHead(t);
    names.forEach(function (n) {
      var z = zones[n], key = "s:" + n;
      t.appendChild(zoneRow(n, z, n === sum ? "sum" : "", key, dt, last));
      seen[key] = z.requestCounter;
      Charts.sample(key, now, counters(z.requestCounter, z.responses, z.requestMsecCounter,
                                       z.requestMsec));
    });
    // charts for the sum and the busiest zones (Host-keyed zones can be many)
    var busy = names.filter(function (n) { return n !== sum; }).sort(function (a, b) {
      return (Charts.rate("s:" + b) - Charts.rate("s:" + a)) ||
             (zones[b].requestCounter - zones[a].requestCounter);
    });
    var g = document.getElementById("zoneCharts");
    g.textContent = "";
    (sum === undefined ? [] : [sum]).concat(busy.slice(0, ZONE_CARDS - 1)).forEach(function (n) {
      g.appendChild(card("zone", n, n === sum ? n + " (all servers)" : n, now, "s:" + n).body());
    });
  }

  function renderFilters(d, dt, last, seen) {
    var f = document.getElementById("filterZones"), groups = Object.keys(d.filterZones || {});
    f.textContent = "";
    if (!groups.length) { f.appendChild(el("div", "empty", "none")); }
    groups.forEach(function (g) {
      f.appendChild(el("h3", "", g));
      var ft = el("table");
      zoneHead(ft);
      Object.keys(d.filterZones[g]).forEach(function (n) {
        var z = d.filterZones[g][n], key = "f:" + g + "\u0000" + n;
        ft.appendChild(zoneRow(n, z, "", key, dt, last));
        seen[key] = z.requestCounter;
      });
      f.appendChild(wrapped(ft));
    });
  }

  /* the peers of group g: VTS's list in configuration order, joined by name
   * with the health document's (which may list peers VTS does not) */
  function peersOf(g, vts, hu) {
    var list = [], byName = {};
    (vts || []).forEach(function (p) { byName[p.server] = { name: p.server, vts: p }; list.push(byName[p.server]); });
    ((hu && hu.peers) || []).forEach(function (h) {
      if (byName[h.name]) { byName[h.name].hc = h; } else { list.push({ name: h.name, hc: h }); }
    });
    return list;
  }

  /* up, down, or removed: the peer left its upstream (DNS or a reload
   * dropped it) and the module keeps its counters until they expire */
  function stateOf(p) {
    if (p.vts && p.vts.removed) { return "removed"; }
    var down = p.hc && p.hc.checked ? p.hc.state === "DOWN" : !!(p.vts && p.vts.down);
    return down ? "down" : "up";
  }

  /* "new": added to its upstream at run time (DNS) less than NEW_FOR ago */
  function isNew(p, now) {
    var v = p.vts || {};
    return !v.removed && v.addedMsec > 0 && now - v.addedMsec < NEW_FOR;
  }

  /* markers where the peer joined or left its upstream (the module's
   * times), and where it went down or up: seen changing between two
   * polls, or reported by the checker (since) within the window on first
   * sight */
  function watchState(key, p, state, now) {
    var was = peerStates[key], since = p.hc && p.hc.since ? p.hc.since * 1000 : null;
    var v = p.vts || {};
    var why = state === "down" && p.hc && p.hc.last_failure ? p.hc.last_failure.message : "";
    if (v.addedMsec && now - v.addedMsec < Charts.WINDOW) {
      Charts.mark(key, v.addedMsec, "NEW", "added to its upstream");
    }
    if (state === "removed") {
      if (v.removedMsec && now - v.removedMsec < Charts.WINDOW) {
        Charts.mark(key, v.removedMsec, "REMOVED", "no longer in its upstream");
      }
    } else if (was !== undefined && was !== "removed" && was !== state) {
      Charts.mark(key, since && now - since < 5000 ? since : now, state.toUpperCase(), why);
    } else if (was === undefined && since && now - since < Charts.WINDOW) {
      Charts.mark(key, since, state.toUpperCase(), why);
    }
    peerStates[key] = state;
  }

  var peerCols = ["Server", "State", "Requests", "Req/s", "Resp (ms)", "2xx", "4xx", "5xx",
                  "Since", "Fails", "Succ.", "Last check", "Last failure",
                  "Weight", "In", "Out"];
  var REASON = 12;            /* the Last failure column */
  /* the failing streak: the checker counts consecutive failures up to its
   * `fall` only (0 once DOWN), so a DOWN peer that still fails every check
   * (no success since) shows how long it has been failing */
  function failStreak(h, now) {
    var failing = h.state === "DOWN" && !h.consecutive_successes && h.last_failure;
    if (!failing) { return h.consecutive_failures; }
    return "failing " + ago(now - (h.since ? h.since * 1000 : h.last_failure.time * 1000));
  }
  function health_cells(h, now) {
    if (!h || !h.checked) { return ["-", "-", "-", "-", h ? "not checked" : ""]; }
    var f = h.last_failure;
    return [h.since ? ago(now - h.since * 1000) : "-", failStreak(h, now),
            h.consecutive_successes,
            (h.last_check ? ago(now - h.last_check * 1000) + " ago" : "-") +
            (typeof h.last_check_duration === "number"
             ? ", " + (h.last_check_duration * 1000).toFixed(1) + " ms" : ""),
            f ? f.message + " (" + ago(now - f.time * 1000) + " ago)" : "none"];
  }
  function peerRow(p, state, key, now, dt, last) {
    var v = p.vts || {}, r = v.responses || {}, tr = el("tr", "peer");
    var fresh = isNew(p, now);
    tr.setAttribute("data-peer", p.name);
    tr.setAttribute("data-state", state);
    var shown = state + ((v.backup || (p.hc && p.hc.role === "backup")) ? " (backup)" : "") +
                (v.drain ? " (draining)" : "") + (fresh ? " (new)" : "");
    if (v.drain) { tr.setAttribute("data-drain", "true"); }
    if (fresh) { tr.setAttribute("data-new", "true"); }
    var cells = [p.name, shown, v.requestCounter, rate(key, v.requestCounter, dt, last),
                 v.responseMsec, r["2xx"], r["4xx"], r["5xx"]]
      .concat(health_cells(p.hc, now), [v.removed ? "-" : v.weight, bytes(v.inBytes),
                                        bytes(v.outBytes)]);
    cells.forEach(function (c, i) {
      var td = el("td", ["k", state + " state", "requests"][i] ||
                  (i === REASON ? "reason" : (i === 9 ? "fails" : "")), c);
      if (i === 0) { td.title = "weight " + v.weight + ", max_fails " + v.maxFails + ", fail_timeout " + v.failTimeout; }
      if (i === REASON) { td.title = td.textContent; }
      tr.appendChild(td);
    });
    return tr;
  }
  function healthInfo(h, state, now) {
    if (!h || !h.checked) { return ["not health-checked"]; }
    var streak = failStreak(h, now);
    var info = [h.since ? "since " + ago(now - h.since * 1000) : "no change seen",
                state === "down" ? (typeof streak === "string" ? streak + ", 0 ok"
                                                                 : h.consecutive_successes + " ok in a row")
                                 : h.consecutive_failures + " failed in a row"];
    if (h.last_check) {
      info.push("checked " + ago(now - h.last_check * 1000) + " ago in " +
                (h.last_check_duration * 1000).toFixed(1) + " ms");
    }
    return info;
  }
  function peerCard(g, p, state, key, now) {
    var c = card("peer", p.name, p.name, now, key), h = p.hc;
    c.setAttribute("data-upstream", g);
    c.setAttribute("data-state", state);
    var badge = el("span", "badge " + state, state.toUpperCase());
    c.firstChild.appendChild(badge);
    if (isNew(p, now)) {            /* DNS added it a moment ago */
      c.setAttribute("data-new", "true");
      c.firstChild.appendChild(el("span", "badge new", "NEW"));
    }
    if (p.vts && p.vts.drain) {     /* `drain`: no new requests, sticky ones finish */
      c.setAttribute("data-drain", "true");
      c.firstChild.appendChild(el("span", "badge drain", "DRAINING"));
    }
    var v = p.vts || {}, info = [];
    if (state === "removed") {      /* no longer a peer: its health no longer matters */
      info.push("removed " + ago(now - v.removedMsec) + " ago, counters kept until they expire");
    } else {
      if (v.addedMsec) { info.push("added " + ago(now - v.addedMsec) + " ago"); }
      info = info.concat(healthInfo(h, state, now));
    }
    c.appendChild(el("div", "card-info", info.join(" \u00b7 ")));
    if (h && h.last_failure && (state === "down" || now - h.last_failure.time * 1000 < Charts.WINDOW)) {
      var why = el("div", "card-reason " + state, h.last_failure.message);
      why.setAttribute("data-reason", h.last_failure.reason);
      why.title = h.last_failure.reason + " at " + new Date(h.last_failure.time * 1000).toISOString();
      c.appendChild(why);
    }
    return c.body();
  }

  function renderUpstreams(d, now, dt, last, seen) {
    var u = document.getElementById("upstreamZones"), vz = d.upstreamZones || {};
    var hz = (health && health.upstreams) || {}, cards = 0;
    var groups = Object.keys(vz);
    Object.keys(hz).forEach(function (g) { if (!vz[g]) { groups.push(g); } });
    u.textContent = "";
    if (!groups.length) { u.appendChild(el("div", "empty", "none")); }
    groups.forEach(function (g) {
      var peers = peersOf(g, vz[g], hz[g]), upCount = 0, removedCount = 0;
      var ut = el("table"), grid = el("div", "grid");
      ut.setAttribute("data-upstream", g);
      head(ut, peerCols);
      peers.forEach(function (p) {
        var key = "u:" + g + "\u0000" + p.name, state = stateOf(p), v = p.vts;
        if (state === "up") { upCount++; }
        if (state === "removed") { removedCount++; }
        if (v) {
          seen[key] = v.requestCounter;
          Charts.sample(key, now, counters(v.requestCounter, v.responses, v.responseMsecCounter,
                                           v.responseMsec));
        }
        watchState(key, p, state, now);
        ut.appendChild(peerRow(p, state, key, now, dt, last));
        if (cards++ < PEER_CARDS) { grid.appendChild(peerCard(g, p, state, key, now)); }
      });
      var down = peers.filter(function (p) { return stateOf(p) === "down"; });
      if (down.length) {
        problem("down", g + ": " + (upCount ? down.length + " of " + (peers.length - removedCount) +
                " peers DOWN" : "no peer UP") + ": " + down.map(function (p) {
                  var f = p.hc && p.hc.last_failure;
                  return p.name + (f ? " (" + f.message + ")" : "");
                }).join(", "));
      }
      var h3 = el("h3", "", g);
      h3.appendChild(el("span", "summary", upCount + "/" + (peers.length - removedCount) + " up" +
                        (removedCount ? ", " + removedCount + " removed" : "") +
                        (hz[g] && hz[g].checked ? ", health-checked" : "")));
      u.appendChild(h3);
      u.appendChild(wrapped(ut));
      u.appendChild(grid);
    });
  }

  function renderCaches(d) {
    var box = document.getElementById("cacheZones"), ct = el("table");
    box.textContent = "";
    if (!caching) { box.appendChild(el("div", "empty", "none")); return; }
    box.appendChild(wrapped(ct));
    head(ct, ["Cache", "Size", "Used", "In", "Out", "Hit", "Miss", "Bypass", "Expired",
              "Stale", "Updating", "Revalidated"]);
    Object.keys(d.cacheZones || {}).forEach(function (n) {
      var z = d.cacheZones[n], r = z.responses || {}, tr = el("tr");
      [n, bytes(z.maxSize), bytes(z.usedSize), bytes(z.inBytes), bytes(z.outBytes), r.hit,
       r.miss, r.bypass, r.expired, r.stale, r.updating, r.revalidated].forEach(function (v, i) {
        tr.appendChild(el("td", i ? "" : "k", v));
      });
      ct.appendChild(tr);
    });
  }

  /* what is wrong, first: DOWN peers (and upstreams with none up), 5xx
   * now, entries the zone dropped */
  var problems = [];
  function problem(kind, s) { problems.push({ kind: kind, text: s }); }
  function renderSummary(d) {
    var box = document.getElementById("summary"), z = d.serverZones || {};
    var names = Object.keys(z), sum = names[names.length - 1];
    var r5 = sum === undefined ? 0 : Charts.rate5("s:" + sum);
    var dropped = (d.sharedZones || {}).droppedNodes || {};
    if (r5 > 0) { problem("5xx", "5xx responses: " + r5.toFixed(1) + "/s"); }
    if (dropped.zoneFull || dropped.maxNode) {
      problem("zone", "zone " + (d.sharedZones || {}).name + ": " +
              (dropped.zoneFull + dropped.maxNode) + " entries not stored (full or capped)");
    }
    box.textContent = "";
    box.className = problems.length ? "bad" : "";
    box.setAttribute("data-problems", String(problems.length));
    if (!problems.length) {
      box.appendChild(el("span", "ok", "No problem seen: every peer up, no 5xx now"));
      return;
    }
    box.appendChild(el("strong", "", problems.length === 1 ? "1 problem" : problems.length + " problems"));
    var ul = el("ul");
    problems.forEach(function (p) { ul.appendChild(el("li", "", p.text)).setAttribute("data-kind", p.kind); });
    box.appendChild(ul);
  }

  function render(d) {
    var now = d.nowMsec, dt = prev ? now - prevAt : 0, last = prev, seen = {};
    caching = Object.keys(d.cacheZones || {}).length > 0;
    problems = [];
    renderHeader(d);
    renderServers(d, now, dt, last, seen);
    renderFilters(d, dt, last, seen);
    renderUpstreams(d, now, dt, last, seen);
    renderCaches(d);
    renderSummary(d);
    Charts.forget(now);
    prev = seen;
    prevAt = now;
    updates++;
    var up = document.getElementById("updated");
    up.className = "";
    up.textContent = "updated " + new Date(now).toISOString() + " (#" + updates + ")";
    document.body.setAttribute("data-updates", String(updates));
    document.body.setAttribute("data-health", health ? "ok" : "absent");
  }

  function failed(message) {
    var up = document.getElementById("updated");
    up.className = "err";
    up.textContent = "error: " + message;
  }
  function fetchText(u, done) {
    var x = new XMLHttpRequest();
    x.open("GET", u + "?_=" + Date.now());
    x.onload = function () { done(x.status === 200 ? x.responseText : null, "HTTP " + x.status); };
    x.onerror = function () { done(null, "cannot fetch " + u); };
    x.send();
  }
  /* the health document, when this config serves one; else look again later */
  function pollHealth(done) {
    if (!health && Date.now() < healthRetryAt) { done(); return; }
    fetchText(healthUrl, function (body) {
      var h = null;
      try { h = body && JSON.parse(body); } catch (e) { h = null; }
      health = h && typeof h.upstreams === "object" && h.upstreams && !h.serverZones ? h : null;
      if (!health) { healthRetryAt = Date.now() + HEALTH_RETRY; }
      done();
    });
  }
  function poll() {
    fetchText(url, function (body, err) {
      if (body === null) { failed(err); setTimeout(poll, 1000); return; }
      pollHealth(function () {
        try { render(JSON.parse(body)); } catch (e) { failed(e.message); }
        setTimeout(poll, 1000);
      });
    });
  }
  poll();
})();
