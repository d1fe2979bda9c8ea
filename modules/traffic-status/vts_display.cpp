/*
 * traffic-status: the display handler, and what the views share.
 *
 * A scrape: the handler picks the view from the URI (or the location's
 * format); when the render starts (at once, or after waiting for a render
 * slot) it takes one sorted store snapshot, and the view's renderer walks
 * it (and the upstream peers of vts_peers.cpp, and the caches) into an
 * output chain that vts_stream sends (in pieces while it is written, when
 * it is large).
 */

#include "vts_display.h"

extern "C" {
extern ngx_module_t  ngx_http_proxy_module;
extern ngx_module_t  ngx_http_fastcgi_module;
extern ngx_module_t  ngx_http_uwsgi_module;
extern ngx_module_t  ngx_http_scgi_module;
}

#define NGX_HTTP_VTS_CONTROL  ((ngx_uint_t) -1)     /* not a format */

namespace {

ngx_int_t render_json(vts_out_t &o, vts_render_t &rd);
ngx_int_t render_jsonp(vts_out_t &o, vts_render_t &rd);
ngx_int_t render_prometheus(vts_out_t &o, vts_render_t &rd);
ngx_int_t render_html(vts_out_t &o, vts_render_t &rd);
ngx_int_t render_exporter(vts_out_t &o, vts_render_t &rd);

/* URI suffixes that override the location's format */
const struct {
    ngx_str_t   suffix;
    ngx_uint_t  format;
} suffixes[] = {
    { ngx_string("/format/json"), NGX_HTTP_VTS_FORMAT_JSON },
    { ngx_string("/format/jsonp"), NGX_HTTP_VTS_FORMAT_JSONP },
    { ngx_string("/format/html"), NGX_HTTP_VTS_FORMAT_HTML },
    { ngx_string("/format/prometheus"), NGX_HTTP_VTS_FORMAT_PROMETHEUS },
    { ngx_string("/format/vts-exporter"), NGX_HTTP_VTS_FORMAT_EXPORTER },
    { ngx_string("/control"), NGX_HTTP_VTS_CONTROL },
};

const struct {
    ngx_uint_t   format;
    const char  *type;
    bool         snapshot;          /* the page itself reads no counters */
    ngx_int_t  (*render)(vts_out_t &o, vts_render_t &rd);
} views[] = {
    { NGX_HTTP_VTS_FORMAT_JSON, "application/json", true, render_json },
    { NGX_HTTP_VTS_FORMAT_JSONP, "application/javascript", true, render_jsonp },
    { NGX_HTTP_VTS_FORMAT_PROMETHEUS,
      "text/plain; version=0.0.4; charset=utf-8", true, render_prometheus },
    { NGX_HTTP_VTS_FORMAT_EXPORTER,
      "text/plain; version=0.0.4; charset=utf-8", true, render_exporter },
    { NGX_HTTP_VTS_FORMAT_HTML, "text/html", false, render_html },
};


bool
uri_ends_with(ngx_http_request_t *r, ngx_str_t *suffix)
{
    ngx_str_t *u = &r->uri;
    size_t n = u->len;

    while (n > 1 && u->data[n - 1] == '/') {
        n--;
    }
    return n >= suffix->len
           && ngx_strncmp(u->data + n - suffix->len, suffix->data,
                          suffix->len) == 0;
}


ngx_int_t
render_json(vts_out_t &o, vts_render_t &rd)
{
    ngx_http_vts_render_json(o, rd);
    o.putc('\n');
    return NGX_OK;
}


/* ?callback=NAME overrides the callback when it is an identifier */
ngx_str_t
jsonp_callback(ngx_http_request_t *r, ngx_str_t cb)
{
    ngx_str_t arg;

    if (ngx_http_arg(r, (u_char *) "callback", 8, &arg) != NGX_OK
        || arg.len == 0 || arg.len > 128)
    {
        return cb;
    }
    for (size_t i = 0; i < arg.len; i++) {
        u_char ch = arg.data[i];
        if (!(ch == '_' || ch == '.' || ch == '$' || (ch >= '0' && ch <= '9')
              || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z')))
        {
            return cb;
        }
    }
    return arg;
}


ngx_int_t
render_jsonp(vts_out_t &o, vts_render_t &rd)
{
    o.put(jsonp_callback(rd.r, rd.vlcf->jsonp));
    o.putc('(');
    ngx_http_vts_render_json(o, rd);
    o.put(")\n");
    return NGX_OK;
}


ngx_int_t
render_prometheus(vts_out_t &o, vts_render_t &rd)
{
    return ngx_http_vts_render_prometheus(o, rd);
}


ngx_int_t
render_exporter(vts_out_t &o, vts_render_t &rd)
{
    return ngx_http_vts_render_exporter(o, rd);
}


ngx_int_t
render_html(vts_out_t &o, vts_render_t &rd)
{
    return ngx_http_vts_render_html(o, rd.r);
}


/* the format a request asks for: a URI suffix, else the location's */
ngx_uint_t
requested_format(ngx_http_request_t *r, ngx_http_vts_loc_conf_t *vlcf)
{
    for (auto &s : suffixes) {
        if (uri_ends_with(r, (ngx_str_t *) &s.suffix)) {
            return s.format;
        }
    }
    return vlcf->format;
}

} // namespace


ngx_int_t
ngx_http_vts_display_handler(ngx_http_request_t *r)
{
    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }
    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    vts_render_t rd;
    rd.r = r;
    rd.vmcf = ngx_http_vts_main_conf(r);
    rd.vlcf = ngx_http_vts_loc_conf(r);

    if (!rd.vmcf->enable || !ngx_http_vts_store_ready(&rd.vmcf->store)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "vhost_traffic_status_display: "
                      "\"vhost_traffic_status_zone\" is not set");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_uint_t format = requested_format(r, rd.vlcf);
    auto *view = &views[0];
    for (auto &v : views) {
        if (v.format == format) {
            view = &v;
        }
    }

    /* the control endpoint answers at once; a view may wait for a render
       slot, and takes its snapshot when it starts */
    rd.reads_zone = format == NGX_HTTP_VTS_CONTROL || view->snapshot;
    if (format == NGX_HTTP_VTS_CONTROL) {
        if (ngx_http_vts_render_start(rd) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return ngx_http_vts_control(r, rd);
    }

    return ngx_http_vts_stream(r, rd, view->render, view->type);
}


ngx_int_t
ngx_http_vts_render_start(vts_render_t &rd)
{
    rd.now = ngx_http_vts_now_msec();
    if (!rd.reads_zone) {
        ngx_memzero(&rd.snap, sizeof(rd.snap));     /* an empty zone */
        return NGX_OK;
    }
    return ngx_http_vts_store_snapshot(&rd.vmcf->store, rd.r->pool, &rd.snap,
                                       true);
}


/* ----------------------------------------------------------------------
 * caches
 */

#if (NGX_HTTP_CACHE)

namespace {

/* every file cache zone: calls fn(name, cache) */
template <typename Fn>
void
for_each_cache(Fn fn)
{
    ngx_list_part_t *part = &((ngx_cycle_t *) ngx_cycle)->shared_memory.part;
    ngx_shm_zone_t *zone = (ngx_shm_zone_t *) part->elts;

    for (ngx_uint_t i = 0; ; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) {
                break;
            }
            part = part->next;
            zone = (ngx_shm_zone_t *) part->elts;
            i = 0;
        }
        if (zone[i].init != nullptr && zone[i].data != nullptr
            && (zone[i].tag == &ngx_http_proxy_module
                || zone[i].tag == &ngx_http_fastcgi_module
                || zone[i].tag == &ngx_http_uwsgi_module
                || zone[i].tag == &ngx_http_scgi_module))
        {
            ngx_http_file_cache_t *cache =
                (ngx_http_file_cache_t *) zone[i].data;
            if (cache->shm_zone == &zone[i]) {
                fn(zone[i].shm.name, cache);
            }
        }
    }
}


void
cache_row(vts_render_t &rd, ngx_http_vts_cache_row_t *row, ngx_str_t name,
    ngx_http_file_cache_t *cache)
{
    static ngx_str_t  empty = ngx_null_string;

    row->name = name;
    row->max = (uint64_t) cache->max_size * cache->bsize;
    row->used = 0;
    if (cache->sh) {
        ngx_shmtx_lock(&cache->shpool->mutex);
        row->used = (uint64_t) cache->sh->size * cache->bsize;
        ngx_shmtx_unlock(&cache->shpool->mutex);
    }
    ngx_http_vts_node_t *node =
        ngx_http_vts_snapshot_find(&rd.snap, NGX_HTTP_VTS_CACHE, empty, name);
    if (node) {
        ngx_http_vts_read_stats(&row->st, &node->stats);
    } else {
        ngx_memzero(&row->st, sizeof(row->st));
    }
}

} // namespace

#endif


ngx_int_t
ngx_http_vts_cache_rows(vts_render_t &rd, ngx_http_vts_cache_row_t **rows,
    ngx_uint_t *n)
{
    *rows = nullptr;
    *n = 0;
#if (NGX_HTTP_CACHE)
    ngx_uint_t nc = 0;
    for_each_cache([&](ngx_str_t, ngx_http_file_cache_t *) { nc++; });
    if (nc == 0) {
        return NGX_OK;
    }
    *rows = (ngx_http_vts_cache_row_t *)
        ngx_palloc(rd.r->pool, sizeof(ngx_http_vts_cache_row_t) * nc);
    if (*rows == nullptr) {
        return NGX_ERROR;
    }
    for_each_cache([&](ngx_str_t name, ngx_http_file_cache_t *cache) {
        if (*n < nc) {
            cache_row(rd, &(*rows)[(*n)++], name, cache);
        }
    });
#endif
    return NGX_OK;
}


/* ----------------------------------------------------------------------
 * figures computed at display time
 */

namespace {

/* adds one server zone's counters and recent samples to the sum */
void
sum_add(ngx_http_vts_stats_t *sum, const ngx_http_vts_stats_t &st,
    ngx_msec_t period, uint64_t now, uint64_t *total_ms, uint64_t *samples)
{
    sum->requests += st.requests;
    sum->in_bytes += st.in_bytes;
    sum->out_bytes += st.out_bytes;
    for (int k = 0; k < 5; k++) {
        sum->responses[k] += st.responses[k];
    }
    for (int k = 0; k < NGX_HTTP_VTS_CACHE_N; k++) {
        sum->cache[k] += st.cache[k];
    }
    sum->request_msec_total += st.request_msec_total;

    uint64_t n = st.req_pos < NGX_HTTP_VTS_AVG_SAMPLES
                 ? st.req_pos : NGX_HTTP_VTS_AVG_SAMPLES;
    for (uint64_t k = 0; k < n; k++) {
        const ngx_http_vts_sample_t *smp = &st.req_samples[k];
        if (smp->time && (period == 0 || smp->time + period >= now)) {
            *total_ms += smp->msec;
            (*samples)++;
        }
    }
}


/* the histogram of the sum, while every zone has the same bounds */
bool
sum_buckets(ngx_http_vts_stats_t *sum, const ngx_http_vts_stats_t &st,
    bool first)
{
    if (first) {
        sum->nbuckets = st.nbuckets;
        ngx_memcpy(sum->bucket_msec, st.bucket_msec, sizeof(st.bucket_msec));
    } else if (st.nbuckets != sum->nbuckets
               || ngx_memcmp(st.bucket_msec, sum->bucket_msec,
                             st.nbuckets * sizeof(uint64_t)) != 0)
    {
        return false;
    }
    for (uint32_t k = 0; k < st.nbuckets; k++) {
        sum->req_buckets[k] += st.req_buckets[k];
    }
    sum->req_overflow += st.req_overflow;
    return true;
}

} // namespace


void
ngx_http_vts_sum_stats(vts_render_t &rd, ngx_http_vts_stats_t *sum,
    uint64_t *avg)
{
    ngx_uint_t first, last;
    ngx_http_vts_stats_t st;
    uint64_t total_ms = 0, samples = 0;
    bool buckets_ok = true;
    ngx_msec_t period = rd.vlcf->average_period;

    ngx_memzero(sum, sizeof(*sum));
    ngx_http_vts_snapshot_range(&rd.snap, NGX_HTTP_VTS_SERVER, &first, &last);

    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_read_stats(&st, &rd.snap.nodes[i]->stats);
        ngx_http_vts_stream_check_slice();
        sum_add(sum, st, period, rd.now, &total_ms, &samples);
        if (buckets_ok) {
            buckets_ok = sum_buckets(sum, st, i == first);
        }
    }

    /* the requests no server entry could be created for (no buckets) */
    ngx_http_vts_read_stats(&st, rd.snap.overflow);
    if (st.requests) {
        sum_add(sum, st, period, rd.now, &total_ms, &samples);
    }

    if (!buckets_ok) {
        sum->nbuckets = 0;
    }
    *avg = samples ? total_ms / samples : 0;
}


uint64_t
ngx_http_vts_req_avg(vts_render_t &rd, const ngx_http_vts_stats_t *st)
{
    return ngx_http_vts_average(st->req_samples, st->req_pos,
                                rd.vlcf->average_method,
                                rd.vlcf->average_period, rd.now);
}


uint64_t
ngx_http_vts_resp_avg(vts_render_t &rd, const ngx_http_vts_stats_t *st)
{
    return ngx_http_vts_average(st->resp_samples, st->resp_pos,
                                rd.vlcf->average_method,
                                rd.vlcf->average_period, rd.now);
}


void
ngx_http_vts_connections(ngx_http_vts_conn_t c[NGX_HTTP_VTS_CONN_N])
{
    static const char *names[NGX_HTTP_VTS_CONN_N] = {
        "active", "reading", "writing", "waiting", "accepted", "handled",
        "requests"
    };
#if (NGX_STAT_STUB)
    ngx_atomic_t *values[NGX_HTTP_VTS_CONN_N] = {
        ngx_stat_active, ngx_stat_reading, ngx_stat_writing, ngx_stat_waiting,
        ngx_stat_accepted, ngx_stat_handled, ngx_stat_requests
    };
#endif
    for (int k = 0; k < NGX_HTTP_VTS_CONN_N; k++) {
        c[k].name = names[k];
        c[k].value = 0;
#if (NGX_STAT_STUB)
        c[k].value = values[k] ? (uint64_t) *values[k] : 0;
#endif
    }
}
