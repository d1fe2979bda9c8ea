/*
 * traffic-status: the Prometheus view (text format 0.0.4), VTS's metric
 * families plus nginx_vts_upstream_peer_{down,drain,removed} and
 * nginx_vts_main_shm_dropped_nodes_total.
 *
 * Server, filter and upstream entries are first collected (servers and
 * filters pointing at their counters in the zone, upstream peers with a
 * copy of theirs), then printed family by family (a family's series must
 * be contiguous), driven by one table of families.
 */

#include "vts_display.h"

namespace {

typedef ngx_http_vts_stats_t  stats_t;

/* the labels of one entry, e.g. host="x" or upstream="u",backend="b";
   text: rendered once per entry (render_labels), copied into each of its
   series (escaping a name once, not ~30 times, is most of the speed) */
struct labels_t {
    const char *k1;
    ngx_str_t   v1;
    const char *k2;      /* may be null */
    ngx_str_t   v2;
    bool        names = false;           /* v1, v2 are node names */
    const ngx_str_t *reserved = nullptr; /* the sum key, for host names */
    ngx_str_t   text = ngx_null_string;
};

struct entry_t {
    labels_t   l;
    stats_t   *st;
    uint64_t   req_avg;
    uint64_t   resp_avg;
    bool       down;
    bool       drain;
    bool       removed;
};

/* one kind of entries: the family prefix and its quirks */
struct kind_t {
    const char *prefix;
    const char *code_label;   /* the status class label (VTS v0.2.7: code) */
    bool        upstream;
};

const kind_t  servers = { "nginx_vts_server", "code", false };
const kind_t  filters = { "nginx_vts_filter", "code", false };
const kind_t  upstreams = { "nginx_vts_upstream", "code", true };


void
put_label(vts_out_t &o, const char *k, ngx_str_t v, bool name,
    const ngx_str_t *reserved)
{
    o.put(k);
    o.put("=\"");
    if (name) {
        ngx_http_vts_put_name(o, v, reserved);
    } else {
        ngx_http_vts_prom_label(o, v);
    }
    o.putc('"');
}


/* l.text = k1="v1"[,k2="v2"], escaped, in one piece of lab's buffer (it
   reserves the worst case: a name byte renders as at most 5 bytes) */
void
render_labels(vts_out_t &lab, labels_t &l)
{
    size_t max = 5 * (l.v1.len + l.v2.len) + 64;

    if (!lab.reserve(max)) {
        ngx_str_null(&l.text);
        return;
    }
    u_char *start = lab.b->last;
    put_label(lab, l.k1, l.v1, l.names, l.reserved);
    if (l.k2) {
        lab.putc(',');
        put_label(lab, l.k2, l.v2, l.names, nullptr);
    }
    l.text.data = start;
    l.text.len = lab.b->last - start;
}


/*
 * One sample line, composed in a local buffer and written with one put
 * (60k lines a scrape: fewer calls into the output is most of the
 * speed).  Labels too long for the buffer get a pool one.
 */
struct line_t {
    u_char   local[512];
    u_char  *start;
    u_char  *p;

    line_t(vts_out_t &o, size_t labels_len) {
        start = local;
        if (labels_len + 192 > sizeof(local)) {
            start = (u_char *) ngx_pnalloc(o.pool, labels_len + 192);
            if (start == nullptr) {
                o.failed = true;
                start = local;      /* written to, never sent */
            }
        }
        p = start;
    }

    void add(const void *d, size_t n) { p = ngx_cpymem(p, d, n); }
    void add(const char *s) { add(s, ngx_strlen(s)); }
    void add(ngx_str_t s) { add(s.data, s.len); }
    template <size_t N> void lit(const char (&s)[N]) { add(s, N - 1); }
    void c(u_char ch) { *p++ = ch; }

    void u64(uint64_t v) { p = ngx_http_vts_put_u64(p, v); }
    void secs(uint64_t ms) { p = ngx_http_vts_put_secs(p, ms); }

    /* the value (seconds when secs), the newline, and out */
    void end(vts_out_t &o, uint64_t v, bool secs) {
        if (secs) {
            this->secs(v);
        } else {
            u64(v);
        }
        c('\n');
        o.put(start, p - start);
    }
};


void
put_secs(vts_out_t &o, uint64_t ms)
{
    line_t line(o, 0);
    line.secs(ms);
    o.put(line.start, line.p - line.start);
}


/* NAME[SUFFIX]{LABELS */
void
series_start(line_t &line, const char *name, const char *suffix, labels_t &l)
{
    line.add(name);
    if (suffix) {
        line.add(suffix);
    }
    line.c('{');
    line.add(l.text);
}


/* name{labels[,extra_k="extra_v"]} v, v in seconds when secs */
void
value(vts_out_t &o, const char *name, labels_t &l, const char *extra_k,
    const char *extra_v, uint64_t v, bool secs)
{
    line_t line(o, l.text.len);

    series_start(line, name, nullptr, l);
    if (extra_k) {
        line.c(',');
        line.add(extra_k);
        line.lit("=\"");
        line.add(extra_v);
        line.c('"');
    }
    line.lit("} ");
    line.end(o, v, secs);
}


/* NAME_SUFFIX{LABELS[,le="B"]} V */
void
hist_line(vts_out_t &o, const char *name, const char *suffix, labels_t &l,
    const uint64_t *le_ms, bool inf, uint64_t v, bool secs)
{
    line_t line(o, l.text.len);

    series_start(line, name, suffix, l);
    if (le_ms) {
        line.lit(",le=\"");
        line.secs(*le_ms);
        line.lit("\"} ");
    } else if (inf) {
        line.lit(",le=\"+Inf\"} ");
    } else {
        line.lit("} ");
    }
    line.end(o, v, secs);
}


/* cumulative _bucket series with +Inf, then _sum and _count */
void
histogram(vts_out_t &o, const char *name, labels_t &l, stats_t *st,
    uint64_t *counters, uint64_t overflow, uint64_t sum_ms)
{
    uint64_t cum = 0;

    for (uint32_t k = 0; k < st->nbuckets; k++) {
        cum += counters[k];
        hist_line(o, name, "_bucket", l, &st->bucket_msec[k], false, cum,
                  false);
    }
    cum += overflow;
    hist_line(o, name, "_bucket", l, nullptr, true, cum, false);
    hist_line(o, name, "_sum", l, nullptr, false, sum_ms, true);
    hist_line(o, name, "_count", l, nullptr, false, cum, false);
}


/* the series of one entry in one family */
typedef void (*series_pt)(vts_out_t &o, const char *name, const kind_t &k,
    entry_t &e);

void
bytes(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, "direction", "in", e.st->in_bytes, false);
    value(o, name, e.l, "direction", "out", e.st->out_bytes, false);
}

void
requests(vts_out_t &o, const char *name, const kind_t &k, entry_t &e)
{
    for (int c = 0; c < 5; c++) {
        value(o, name, e.l, k.code_label, ngx_http_vts_class_names[c],
              e.st->responses[c], false);
    }
}

void
request_total(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, nullptr, nullptr, e.st->request_msec_total, true);
}

void
request_avg(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, nullptr, nullptr, e.req_avg, true);
}

void
response_total(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, nullptr, nullptr, e.st->response_msec_total, true);
}

void
response_avg(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, nullptr, nullptr, e.resp_avg, true);
}

void
request_histogram(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    if (e.st->nbuckets) {
        histogram(o, name, e.l, e.st, e.st->req_buckets, e.st->req_overflow,
                  e.st->request_msec_total);
    }
}

void
response_histogram(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    if (e.st->nbuckets) {
        histogram(o, name, e.l, e.st, e.st->resp_buckets, e.st->resp_overflow,
                  e.st->response_msec_total);
    }
}

void
cache_total(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    for (int c = 0; c < NGX_HTTP_VTS_CACHE_N; c++) {
        value(o, name, e.l, "status", ngx_http_vts_cache_names[c],
              e.st->cache[c], false);
    }
}

void
peer_down(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, nullptr, nullptr, e.down ? 1 : 0, false);
}

void
peer_drain(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, nullptr, nullptr, e.drain ? 1 : 0, false);
}

void
peer_removed(vts_out_t &o, const char *name, const kind_t &, entry_t &e)
{
    value(o, name, e.l, nullptr, nullptr, e.removed ? 1 : 0, false);
}


/* which kinds of entries a family is printed for */
enum {
    F_ALL = 0,
    F_UPSTREAM = 1,         /* upstream peers only */
    F_OTHERS = 2,           /* servers and filters only */
    F_HISTOGRAM = 4         /* only when some entry has buckets */
};

const struct {
    const char  *suffix;
    const char  *type;
    const char  *help;
    unsigned     only;
    series_pt    series;
} families[] = {
    { "_bytes_total", "counter", "The request/response bytes", F_ALL, bytes },
    { "_requests_total", "counter", "The requests counter", F_ALL, requests },
    { "_request_seconds_total", "counter",
      "The request processing time in seconds", F_ALL, request_total },
    { "_request_seconds", "gauge",
      "The average of request processing times in seconds", F_ALL,
      request_avg },
    { "_response_seconds_total", "counter",
      "The only upstream response processing time in seconds", F_UPSTREAM,
      response_total },
    { "_response_seconds", "gauge",
      "The average of only upstream response processing times in seconds",
      F_UPSTREAM, response_avg },
    { "_request_duration_seconds", "histogram",
      "The histogram of request processing time", F_HISTOGRAM,
      request_histogram },
    { "_response_duration_seconds", "histogram",
      "The histogram of the upstream response processing time",
      F_HISTOGRAM|F_UPSTREAM, response_histogram },
    { "_cache_total", "counter", "The requests cache counter", F_OTHERS,
      cache_total },
    { "_peer_down", "gauge", "1 when the peer is marked down (nginx-portable "
      "addition, not in VTS)", F_UPSTREAM, peer_down },
    { "_peer_drain", "gauge", "1 when the peer is draining: `drain`, no new "
      "requests (nginx-portable addition, not in VTS)", F_UPSTREAM, peer_drain },
    { "_peer_removed", "gauge", "1 when the peer left its upstream (DNS or a "
      "reload removed it): its counters are kept until they expire "
      "(nginx-portable addition, not in VTS)", F_UPSTREAM, peer_removed },
};


void
entries(vts_out_t &o, const kind_t &k, entry_t *e, ngx_uint_t n)
{
    char name[128];
    bool any_buckets = false;
    vts_out_t lab(o.pool);

    for (ngx_uint_t i = 0; i < n; i++) {
        any_buckets = any_buckets || e[i].st->nbuckets;
        render_labels(lab, e[i].l);
    }
    if (lab.failed) {
        o.failed = true;
        return;
    }

    for (auto &f : families) {
        if (n == 0
            || ((f.only & F_UPSTREAM) && !k.upstream)
            || ((f.only & F_OTHERS) && k.upstream)
            || ((f.only & F_HISTOGRAM) && !any_buckets))
        {
            continue;
        }
        ngx_sprintf((u_char *) name, "%s%s%Z", k.prefix, f.suffix);
        ngx_http_vts_prom_family(o, name, f.type, f.help);
        for (ngx_uint_t i = 0; i < n; i++) {
            f.series(o, name, k, e[i]);
        }
    }
}


/* nginx_vts_info .. nginx_vts_main_shm_dropped_nodes_total */
void
main_families(vts_out_t &o, vts_render_t &rd)
{
    ngx_http_vts_prom_family(o, "nginx_vts_info", "gauge", "Nginx info");
    o.put("nginx_vts_info{hostname=\"");
    ngx_http_vts_prom_label(o, ((ngx_cycle_t *) ngx_cycle)->hostname);
    o.put("\",module_version=\"" NGX_HTTP_VTS_MODULE_VERSION
          "\",version=\"" NGINX_VERSION "\"} 1\n");

    ngx_http_vts_prom_family(o, "nginx_vts_start_time_seconds",
        "gauge", "Nginx start time");
    o.put("nginx_vts_start_time_seconds ");
    put_secs(o, rd.snap.start_msec);
    o.putc('\n');

    ngx_http_vts_prom_family(o, "nginx_vts_main_connections",
        "gauge", "Nginx connections");
#if (NGX_STAT_STUB)
    /* alphabetical, as VTS: accepted active handled reading requests
       waiting writing */
    static const int order[NGX_HTTP_VTS_CONN_N] = { 4, 0, 5, 1, 6, 3, 2 };
    ngx_http_vts_conn_t c[NGX_HTTP_VTS_CONN_N];
    ngx_http_vts_connections(c);
    for (int k : order) {
        o.put("nginx_vts_main_connections{status=\"");
        o.put(c[k].name);
        o.put("\"} ");
        o.u64(c[k].value);
        o.putc('\n');
    }
#endif

    ngx_http_vts_prom_family(o, "nginx_vts_main_shm_usage_bytes", "gauge",
           "Shared memory [vhost_traffic_status] info");
    o.put("nginx_vts_main_shm_usage_bytes{shared=\"max_size\"} ");
    o.u64(rd.snap.max_size);
    o.put("\nnginx_vts_main_shm_usage_bytes{shared=\"used_size\"} ");
    o.u64(rd.snap.used_size);
    o.put("\nnginx_vts_main_shm_usage_bytes{shared=\"used_node\"} ");
    o.u64(rd.snap.used_node);
    o.put("\nnginx_vts_main_shm_usage_bytes{shared=\"free_size\"} ");
    o.u64(rd.snap.free_size);
    o.putc('\n');

    ngx_http_vts_prom_family(o, "nginx_vts_main_shm_dropped_nodes_total",
        "counter",
           "New entries not stored because the zone was full or a "
           "cap was reached, and entries evicted by filter_max_node "
           "(nginx-portable addition)");
    o.put("nginx_vts_main_shm_dropped_nodes_total{reason=\"zone_full\"} ");
    o.u64(rd.snap.dropped_full);
    o.put("\nnginx_vts_main_shm_dropped_nodes_total{reason=\"max_node\"} ");
    o.u64(rd.snap.dropped_limit);
    o.put("\nnginx_vts_main_shm_dropped_nodes_total{reason=\"evicted\"} ");
    o.u64(rd.snap.dropped_evicted);
    o.putc('\n');
}


/* measure_status_codes: nginx_vts_status_code_requests_total{host,code} per
   server zone ("all": the codes seen) */
void
status_code_family(vts_out_t &o, vts_render_t &rd)
{
    ngx_http_vts_codes_t *codes = rd.vmcf->store.codes;
    ngx_uint_t first, last;

    if (codes == nullptr) {
        return;
    }
    const char *name = "nginx_vts_status_code_requests_total";
    vts_out_t lab(o.pool);
    ngx_http_vts_prom_family(o, name,
        "counter", "The requests counter by status code");
    ngx_http_vts_snapshot_range(&rd.snap, NGX_HTTP_VTS_SERVER, &first, &last);
    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *n = rd.snap.nodes[i];
        if (n->ncodes != codes->n) {
            continue;
        }
        labels_t l = { "host", ngx_http_vts_node_name(n), nullptr,
                       ngx_null_string, true, &rd.vlcf->sum_key };
        render_labels(lab, l);
        const uint64_t *v = ngx_http_vts_node_codes(n);
        for (uint16_t k = 0; k < codes->n; k++) {
            uint64_t c = ngx_http_vts_load(&v[k]);
            if (k && codes->all && c == 0) {
                continue;
            }
            u_char code[NGX_INT_T_LEN + 1];
            *ngx_sprintf(code, "%ui", (ngx_uint_t) codes->code[k]) = '\0';
            value(o, name, l, "code", k ? (const char *) code : "other", c,
                  false);
        }
    }
}


/* the entries of the nodes of one kind (servers, filters): their series
   read the counters in the zone itself (each a single aligned load, as
   read_stats does), so a render holds no copy of every entry's counters
   (~3 KB an entry: 50 MB for a full 64 MB zone, per render) */
ngx_uint_t
node_entries(vts_render_t &rd, uint8_t kind, entry_t *e)
{
    ngx_uint_t first, last, m = 0;

    ngx_http_vts_snapshot_range(&rd.snap, kind, &first, &last);
    for (ngx_uint_t i = first; i < last; i++, m++) {
        ngx_http_vts_node_t *node = rd.snap.nodes[i];
        if (kind == NGX_HTTP_VTS_SERVER) {
            e[m].l = { "host", ngx_http_vts_node_name(node), nullptr,
                       ngx_null_string, true, &rd.vlcf->sum_key };
        } else {
            e[m].l = { "filter", ngx_http_vts_node_group(node),
                       "filter_name", ngx_http_vts_node_name(node), true,
                       nullptr };
        }
        e[m].st = &node->stats;
        e[m].req_avg = ngx_http_vts_req_avg(rd, e[m].st);
        ngx_http_vts_stream_check_slice();
    }
    return m;
}


/* the peers of ngx_http_vts_upstreams, their counters copied into st */
ngx_uint_t
peer_entries(vts_render_t &rd, entry_t *e, stats_t *st)
{
    ngx_uint_t m = 0;

    ngx_http_vts_peers(rd, [&](ngx_str_t group, ngx_http_vts_peer_t &pi) {
        if (pi.node) {
            ngx_http_vts_read_stats(&st[m], &pi.node->stats);
            ngx_http_vts_stream_check_slice();
        } else {
            ngx_memzero(&st[m], sizeof(st[m]));
        }
        e[m].l = { "upstream", group, "backend", pi.name };
        e[m].st = &st[m];
        e[m].down = pi.down;
        e[m].drain = pi.drain;
        e[m].removed = pi.removed;
        e[m].req_avg = ngx_http_vts_req_avg(rd, &st[m]);
        e[m].resp_avg = ngx_http_vts_resp_avg(rd, &st[m]);
        m++;
    });
    return m;
}


ngx_int_t
cache_families(vts_out_t &o, vts_render_t &rd)
{
    ngx_http_vts_cache_row_t *rows;
    ngx_uint_t n;

    if (ngx_http_vts_cache_rows(rd, &rows, &n) != NGX_OK) {
        return NGX_ERROR;
    }
    if (n == 0) {
        return NGX_OK;
    }
    labels_t *l = (labels_t *) ngx_palloc(rd.r->pool, n * sizeof(labels_t));
    vts_out_t lab(o.pool);
    if (l == nullptr) {
        return NGX_ERROR;
    }
    for (ngx_uint_t i = 0; i < n; i++) {
        l[i] = { "cache_zone", rows[i].name, nullptr, ngx_null_string };
        render_labels(lab, l[i]);
    }

    const char *name = "nginx_vts_cache_usage_bytes";
    ngx_http_vts_prom_family(o, name,
        "gauge", "The cache zone capacity in bytes");
    for (ngx_uint_t i = 0; i < n; i++) {
        value(o, name, l[i], "cache_size", "max", rows[i].max, false);
        value(o, name, l[i], "cache_size", "used", rows[i].used, false);
    }
    name = "nginx_vts_cache_bytes_total";
    ngx_http_vts_prom_family(o, name,
        "counter", "The cache zone request/response bytes");
    for (ngx_uint_t i = 0; i < n; i++) {
        value(o, name, l[i], "direction", "in", rows[i].st.in_bytes, false);
        value(o, name, l[i], "direction", "out", rows[i].st.out_bytes, false);
    }
    name = "nginx_vts_cache_requests_total";
    ngx_http_vts_prom_family(o, name, "counter", "The cache requests counter");
    for (ngx_uint_t i = 0; i < n; i++) {
        for (int c = 0; c < NGX_HTTP_VTS_CACHE_N; c++) {
            value(o, name, l[i], "status", ngx_http_vts_cache_names[c],
                  rows[i].st.cache[c], false);
        }
    }
    return NGX_OK;
}

} // namespace


ngx_int_t
ngx_http_vts_render_prometheus(vts_out_t &o, vts_render_t &rd)
{
    main_families(o, rd);

    if (ngx_http_vts_upstreams(rd) != NGX_OK) {
        return NGX_ERROR;
    }
    ngx_uint_t peers = 0;
    for (ngx_uint_t i = 0; i < rd.nupstreams; i++) {
        peers += rd.upstreams[i].n;
    }
    /* entries: the nodes of a kind and the sum key, or the peers; copies
       of counters: the sum key's and the peers' */
    ngx_uint_t n = ngx_max(rd.snap.n + 1, peers);
    entry_t *e = (entry_t *) ngx_palloc(rd.r->pool, sizeof(entry_t) * n);
    stats_t *st = (stats_t *) ngx_palloc(rd.r->pool,
                                         sizeof(stats_t) * (peers + 1));
    if (e == nullptr || st == nullptr) {
        return NGX_ERROR;
    }

    /* servers, then the sum key */
    ngx_uint_t m = node_entries(rd, NGX_HTTP_VTS_SERVER, e);
    ngx_http_vts_sum_stats(rd, &st[0], &e[m].req_avg);
    e[m].l = { "host", rd.vlcf->sum_key, nullptr, ngx_null_string };
    e[m].st = &st[0];
    entries(o, servers, e, m + 1);
    status_code_family(o, rd);

    m = node_entries(rd, NGX_HTTP_VTS_FILTER, e);
    entries(o, filters, e, m);

    m = peer_entries(rd, e, st + 1);
    entries(o, upstreams, e, m);

    return cache_families(o, rd);
}
