/*
 * traffic-status: the display format "vts-exporter", the metric names and
 * labels of nginx-vts-exporter (hnlq715/nginx-vts-exporter, v0.10.x): the
 * exporter read VTS's JSON and printed nginx_server_*, nginx_upstream_*,
 * nginx_filter_* and nginx_cache_*; dashboards built for it (grafana.com
 * 2949 and its copies) work with this page scraped in its place.
 *
 * Kept as the exporter printed them, so its dashboards' queries match:
 * counters without _total, the averages in whole milliseconds in the
 * camelCase families *_requestMsec / *_responseMsec, code="total" beside
 * the status classes, upstream bytes summed per upstream.  The counters
 * are typed untyped (promtool's lint rejects a counter without _total;
 * PromQL's rate() does not look at the type), so the camelCase names are
 * the only lint complaints left.  Its own page, not a part of the merged
 * /metrics: the health checker's nginx_upstream_* families live there.
 *
 * Entries are first collected (names and copies of the counters a family
 * prints), then printed family by family (a family's series are contiguous).
 */

#include "vts_display.h"

namespace {

typedef ngx_http_vts_stats_t  stats_t;

/* the exporter's counters, which have no _total (see above) */
const char  *const COUNTER = "untyped";

/* what one entry prints: its label values and the counters */
struct row_t {
    ngx_str_t   v1;              /* host / filter / upstream / zone */
    ngx_str_t   v2;              /* filterName / backend (may be empty) */
    bool        names;           /* v1, v2 are node names (client input) */
    uint64_t    requests;
    uint64_t    in_bytes;
    uint64_t    out_bytes;
    uint64_t    responses[5];
    uint64_t    cache[NGX_HTTP_VTS_CACHE_N];
    uint64_t    req_avg;         /* msec */
    uint64_t    resp_avg;
};

struct rows_t {
    row_t       *r;
    ngx_uint_t   n;
};

/* the exporter's order of the cache statuses (alphabetical) */
const int  cache_order[NGX_HTTP_VTS_CACHE_N] = {
    NGX_HTTP_VTS_CACHE_BYPASS, NGX_HTTP_VTS_CACHE_EXPIRED,
    NGX_HTTP_VTS_CACHE_HIT, NGX_HTTP_VTS_CACHE_MISS,
    NGX_HTTP_VTS_CACHE_REVALIDATED, NGX_HTTP_VTS_CACHE_SCARCE,
    NGX_HTTP_VTS_CACHE_STALE, NGX_HTTP_VTS_CACHE_UPDATING
};


void
label_value(vts_out_t &o, ngx_str_t v, bool name, const ngx_str_t *reserved)
{
    if (name) {
        ngx_http_vts_put_name(o, v, reserved);
    } else {
        ngx_http_vts_prom_label(o, v);
    }
}


/* the labels of a row, in the exporter's order; extra ("code", "total")
   goes after k1 (or after k2 when last) */
struct labels_t {
    const char       *k1;
    const char       *k2;        /* nullptr: one label of the row */
    const ngx_str_t  *reserved;  /* the sum key, for host names */
};


/* NAME{K1="V1"[,K2="V2"][,EK="EV"]} VALUE */
void
series(vts_out_t &o, const char *name, const labels_t &l, const row_t &r,
    const char *ek, const char *ev, uint64_t v)
{
    o.put(name);
    o.putc('{');
    o.put(l.k1);
    o.put("=\"");
    label_value(o, r.v1, r.names, l.reserved);
    o.putc('"');
    if (l.k2) {
        o.putc(',');
        o.put(l.k2);
        o.put("=\"");
        label_value(o, r.v2, r.names, nullptr);
        o.putc('"');
    }
    if (ek) {
        o.putc(',');
        o.put(ek);
        o.put("=\"");
        o.put(ev);
        o.putc('"');
    }
    o.put("} ");
    o.u64(v);
    o.putc('\n');
}


void
requests_family(vts_out_t &o, const char *name, const labels_t &l,
    rows_t rows)
{
    ngx_http_vts_prom_family(o, name, COUNTER, "requests counter");
    for (ngx_uint_t i = 0; i < rows.n; i++) {
        const row_t &r = rows.r[i];
        series(o, name, l, r, "code", "total", r.requests);
        for (int c = 0; c < 5; c++) {
            series(o, name, l, r, "code", ngx_http_vts_class_names[c],
                   r.responses[c]);
        }
    }
}


void
bytes_family(vts_out_t &o, const char *name, const char *help,
    const labels_t &l, rows_t rows)
{
    ngx_http_vts_prom_family(o, name, COUNTER, help);
    for (ngx_uint_t i = 0; i < rows.n; i++) {
        series(o, name, l, rows.r[i], "direction", "in", rows.r[i].in_bytes);
        series(o, name, l, rows.r[i], "direction", "out",
               rows.r[i].out_bytes);
    }
}


void
cache_family(vts_out_t &o, const char *name, const char *help,
    const labels_t &l, rows_t rows)
{
    ngx_http_vts_prom_family(o, name, COUNTER, help);
    for (ngx_uint_t i = 0; i < rows.n; i++) {
        for (int c : cache_order) {
            series(o, name, l, rows.r[i], "status",
                   ngx_http_vts_cache_names[c], rows.r[i].cache[c]);
        }
    }
}


void
msec_family(vts_out_t &o, const char *name, const char *help,
    const labels_t &l, rows_t rows, bool response)
{
    ngx_http_vts_prom_family(o, name, "gauge", help);
    for (ngx_uint_t i = 0; i < rows.n; i++) {
        series(o, name, l, rows.r[i], nullptr, nullptr,
               response ? rows.r[i].resp_avg : rows.r[i].req_avg);
    }
}


void
fill_row(vts_render_t &rd, row_t &r, const stats_t *src)
{
    stats_t st;

    ngx_http_vts_read_stats(&st, src);
    r.requests = st.requests;
    r.in_bytes = st.in_bytes;
    r.out_bytes = st.out_bytes;
    ngx_memcpy(r.responses, st.responses, sizeof(r.responses));
    ngx_memcpy(r.cache, st.cache, sizeof(r.cache));
    r.req_avg = ngx_http_vts_req_avg(rd, &st);
    r.resp_avg = ngx_http_vts_resp_avg(rd, &st);
}


/* the nodes of kind (servers: and the sum key "*", as VTS's JSON lists it
   among serverZones) */
ngx_int_t
node_rows(vts_render_t &rd, uint8_t kind, rows_t &rows)
{
    ngx_uint_t first, last;

    ngx_http_vts_snapshot_range(&rd.snap, kind, &first, &last);
    rows.r = (row_t *) ngx_pcalloc(rd.r->pool,
                                   (last - first + 1) * sizeof(row_t));
    if (rows.r == nullptr) {
        return NGX_ERROR;
    }
    rows.n = 0;
    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *node = rd.snap.nodes[i];
        row_t &r = rows.r[rows.n++];
        r.names = true;
        if (kind == NGX_HTTP_VTS_SERVER) {
            r.v1 = ngx_http_vts_node_name(node);
        } else {
            r.v1 = ngx_http_vts_node_group(node);
            r.v2 = ngx_http_vts_node_name(node);
        }
        fill_row(rd, r, &node->stats);
        ngx_http_vts_stream_check_slice();
    }
    if (kind == NGX_HTTP_VTS_SERVER) {
        stats_t sum;
        uint64_t avg;
        row_t &r = rows.r[rows.n++];
        ngx_http_vts_sum_stats(rd, &sum, &avg);
        fill_row(rd, r, &sum);
        r.v1 = rd.vlcf->sum_key;
        r.req_avg = avg;
    }
    return NGX_OK;
}


/* every peer (rows) and every upstream group with its peers' bytes summed
   (groups: the exporter's nginx_upstream_bytes{upstream,direction}) */
ngx_int_t
peer_rows(vts_render_t &rd, rows_t &peers, rows_t &groups)
{
    if (ngx_http_vts_upstreams(rd) != NGX_OK) {
        return NGX_ERROR;
    }
    ngx_uint_t n = 0;
    for (ngx_uint_t i = 0; i < rd.nupstreams; i++) {
        n += rd.upstreams[i].n;
    }
    peers.r = (row_t *) ngx_pcalloc(rd.r->pool, (n + 1) * sizeof(row_t));
    groups.r = (row_t *) ngx_pcalloc(rd.r->pool,
                                     (rd.nupstreams + 1) * sizeof(row_t));
    if (peers.r == nullptr || groups.r == nullptr) {
        return NGX_ERROR;
    }
    peers.n = 0;
    groups.n = 0;
    for (ngx_uint_t i = 0; i < rd.nupstreams; i++) {
        ngx_http_vts_upstream_t *u = &rd.upstreams[i];
        row_t &g = groups.r[groups.n++];
        g.v1 = u->group;
        for (ngx_uint_t k = 0; k < u->n; k++) {
            row_t &r = peers.r[peers.n++];
            r.v1 = u->group;
            r.v2 = u->peers[k].name;
            if (u->peers[k].node) {
                fill_row(rd, r, &u->peers[k].node->stats);
            }
            g.in_bytes += r.in_bytes;
            g.out_bytes += r.out_bytes;
            ngx_http_vts_stream_check_slice();
        }
    }
    return NGX_OK;
}


ngx_int_t
cache_rows(vts_render_t &rd, rows_t &rows)
{
    ngx_http_vts_cache_row_t *c;
    ngx_uint_t n;

    if (ngx_http_vts_cache_rows(rd, &c, &n) != NGX_OK) {
        return NGX_ERROR;
    }
    rows.r = (row_t *) ngx_pcalloc(rd.r->pool, (n + 1) * sizeof(row_t));
    if (rows.r == nullptr) {
        return NGX_ERROR;
    }
    for (ngx_uint_t i = 0; i < n; i++) {
        rows.r[i].v1 = c[i].name;
        fill_row(rd, rows.r[i], &c[i].st);
    }
    rows.n = n;
    return NGX_OK;
}


/* nginx_server_info (the value: uptime in seconds) and
   nginx_server_connections */
void
main_families(vts_out_t &o, vts_render_t &rd)
{
    ngx_http_vts_prom_family(o, "nginx_server_info", "gauge", "nginx info");
    o.put("nginx_server_info{hostName=\"");
    ngx_http_vts_prom_label(o, ((ngx_cycle_t *) ngx_cycle)->hostname);
    o.put("\",nginxVersion=\"" NGINX_VERSION "\"} ");
    o.u64(rd.now > rd.snap.start_msec
          ? (rd.now - rd.snap.start_msec) / 1000 : 0);
    o.putc('\n');

    ngx_http_vts_prom_family(o, "nginx_server_connections",
        "gauge", "nginx connections");
    ngx_http_vts_conn_t c[NGX_HTTP_VTS_CONN_N];
    ngx_http_vts_connections(c);
    for (auto &k : c) {
        o.put("nginx_server_connections{status=\"");
        o.put(k.name);
        o.put("\"} ");
        o.u64(k.value);
        o.putc('\n');
    }
}


void
server_families(vts_out_t &o, vts_render_t &rd, rows_t rows)
{
    labels_t l = { "host", nullptr, &rd.vlcf->sum_key };

    requests_family(o, "nginx_server_requests", l, rows);
    bytes_family(o, "nginx_server_bytes", "request/response bytes", l, rows);
    cache_family(o, "nginx_server_cache", "cache counter", l, rows);
    msec_family(o, "nginx_server_requestMsec",
                "average of request processing times in milliseconds", l,
                rows, false);
}


void
upstream_families(vts_out_t &o, rows_t peers, rows_t groups)
{
    labels_t l = { "upstream", "backend", nullptr };
    labels_t g = { "upstream", nullptr, nullptr };

    if (peers.n == 0) {
        return;
    }
    requests_family(o, "nginx_upstream_requests", l, peers);
    bytes_family(o, "nginx_upstream_bytes", "request/response bytes", g,
                 groups);
    msec_family(o, "nginx_upstream_responseMsec", "average of only "
                "upstream/backend response processing times in milliseconds",
                l, peers, true);
    msec_family(o, "nginx_upstream_requestMsec",
                "average of request processing times in milliseconds", l,
                peers, false);
}


void
filter_families(vts_out_t &o, rows_t rows)
{
    labels_t l = { "filter", "filterName", nullptr };

    if (rows.n == 0) {
        return;
    }
    requests_family(o, "nginx_filter_requests", l, rows);
    bytes_family(o, "nginx_filter_bytes", "request/response bytes", l, rows);
    msec_family(o, "nginx_filter_responseMsec", "average of only "
                "upstream/backend response processing times in milliseconds",
                l, rows, true);
    msec_family(o, "nginx_filter_requestMsec",
                "average of request processing times in milliseconds", l,
                rows, false);
}


void
cache_families(vts_out_t &o, rows_t rows)
{
    labels_t l = { "zone", nullptr, nullptr };

    if (rows.n == 0) {
        return;
    }
    cache_family(o, "nginx_cache_requests", "cache requests counter", l,
                 rows);
    bytes_family(o, "nginx_cache_bytes", "cache request/response bytes", l,
                 rows);
}

} // namespace


ngx_int_t
ngx_http_vts_render_exporter(vts_out_t &o, vts_render_t &rd)
{
    rows_t servers, filters, peers, groups, caches;

    if (node_rows(rd, NGX_HTTP_VTS_SERVER, servers) != NGX_OK
        || node_rows(rd, NGX_HTTP_VTS_FILTER, filters) != NGX_OK
        || peer_rows(rd, peers, groups) != NGX_OK
        || cache_rows(rd, caches) != NGX_OK)
    {
        return NGX_ERROR;
    }

    main_families(o, rd);
    server_families(o, rd, servers);
    upstream_families(o, peers, groups);
    filter_families(o, filters);
    cache_families(o, caches);
    return NGX_OK;
}
