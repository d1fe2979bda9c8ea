/*
 * traffic-status: counting, in the log phase of every counted request.
 *
 * log phase -> one sample of the request -> count_server, count_filters,
 * count_upstream, count_cache -> store.get (a worker cache hit takes no
 * lock) -> relaxed atomic adds into the node's counters.
 */

#include "vts_conf.h"

#define NGX_HTTP_VTS_DEDUP_MAX  16      /* filter keys checked for repeats */

namespace {

ngx_str_t  empty_group = ngx_null_string;

/* what one request adds */
struct sample_t {
    ngx_uint_t  status;
    uint64_t    in;
    uint64_t    out;
    uint64_t    request_msec;
    int64_t     response_msec;    /* < 0: none */
    ngx_int_t   cache;            /* < 0: none */
    uint64_t    now;
    bool        ignored;          /* ignore_status: only the time moves */
};


void
count_buckets(ngx_http_vts_stats_t *st, uint64_t *counters, uint64_t *overflow,
    uint64_t ms)
{
    uint32_t nb = st->nbuckets;

    for (uint32_t i = 0; i < nb; i++) {
        if (ms <= st->bucket_msec[i]) {
            ngx_http_vts_add(&counters[i], 1);
            return;
        }
    }
    if (nb) {
        ngx_http_vts_add(overflow, 1);
    }
}


void
count(ngx_http_vts_stats_t *st, sample_t *s)
{
    /* locked adds are the main cost here: skip those that add nothing */
    ngx_http_vts_add(&st->requests, 1);
    if (s->in) {
        ngx_http_vts_add(&st->in_bytes, s->in);
    }
    if (s->out) {
        ngx_http_vts_add(&st->out_bytes, s->out);
    }
    if (s->status >= 100 && s->status < 600) {
        ngx_http_vts_add(&st->responses[s->status / 100 - 1], 1);
    }
    if (s->cache >= 0) {
        ngx_http_vts_add(&st->cache[s->cache], 1);
    }
    if (s->request_msec) {
        ngx_http_vts_add(&st->request_msec_total, s->request_msec);
    }

    uint64_t pos = __atomic_fetch_add(&st->req_pos, 1, __ATOMIC_RELAXED);
    ngx_http_vts_sample_t *smp =
        &st->req_samples[pos % NGX_HTTP_VTS_AVG_SAMPLES];
    ngx_http_vts_set_u64(&smp->msec, s->request_msec);
    ngx_http_vts_set_u64(&smp->time, s->now);
    count_buckets(st, st->req_buckets, &st->req_overflow, s->request_msec);

    if (s->response_msec >= 0) {
        uint64_t ms = (uint64_t) s->response_msec;
        if (ms) {
            ngx_http_vts_add(&st->response_msec_total, ms);
        }
        pos = __atomic_fetch_add(&st->resp_pos, 1, __ATOMIC_RELAXED);
        smp = &st->resp_samples[pos % NGX_HTTP_VTS_AVG_SAMPLES];
        ngx_http_vts_set_u64(&smp->msec, ms);
        ngx_http_vts_set_u64(&smp->time, s->now);
        count_buckets(st, st->resp_buckets, &st->resp_overflow, ms);
    }
}


void
count_node(ngx_http_vts_node_t *node, sample_t *s)
{
    if (node) {
        ngx_http_vts_touch(node, s->now);
        if (!s->ignored) {
            count(&node->stats, s);
        }
    }
}


/* measure_status_codes: the exact code's counter of a server zone */
void
count_code(ngx_http_vts_codes_t *codes, ngx_http_vts_node_t *node,
    sample_t *s)
{
    ngx_uint_t slot = s->status <= NGX_HTTP_VTS_CODE_MAX
                      ? codes->slot[s->status] : 0;

    if (slot < node->ncodes) {
        ngx_http_vts_add(&ngx_http_vts_node_codes(node)[slot], 1);
    }
}


ngx_int_t
cache_index(ngx_http_request_t *r)
{
#if (NGX_HTTP_CACHE)
    static const ngx_int_t index[] = {
        -1,                                 /* 0: no cache status */
        NGX_HTTP_VTS_CACHE_MISS,            /* NGX_HTTP_CACHE_MISS */
        NGX_HTTP_VTS_CACHE_BYPASS,          /* NGX_HTTP_CACHE_BYPASS */
        NGX_HTTP_VTS_CACHE_EXPIRED,         /* NGX_HTTP_CACHE_EXPIRED */
        NGX_HTTP_VTS_CACHE_STALE,           /* NGX_HTTP_CACHE_STALE */
        NGX_HTTP_VTS_CACHE_UPDATING,        /* NGX_HTTP_CACHE_UPDATING */
        NGX_HTTP_VTS_CACHE_REVALIDATED,     /* NGX_HTTP_CACHE_REVALIDATED */
        NGX_HTTP_VTS_CACHE_HIT,             /* NGX_HTTP_CACHE_HIT */
        NGX_HTTP_VTS_CACHE_SCARCE,          /* NGX_HTTP_CACHE_SCARCE */
    };
    static_assert(NGX_HTTP_CACHE_MISS == 1 && NGX_HTTP_CACHE_SCARCE == 8,
                  "nginx cache status numbering");

    if (r->upstream == NULL) {
        return -1;
    }
    ngx_uint_t cs = r->upstream->cache_status;
    return cs < sizeof(index) / sizeof(index[0]) ? index[cs] : -1;
#else
    return -1;
#endif
}


void
take_sample(ngx_http_request_t *r, sample_t *s)
{
    ngx_time_t *tp = ngx_timeofday();
    ngx_msec_int_t ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                                          + (tp->msec - r->start_msec));

    s->status = r->err_status ? r->err_status : r->headers_out.status;
    s->in = (uint64_t) (r->request_length > 0 ? r->request_length : 0);
    s->out = (uint64_t) (r->connection->sent > 0 ? r->connection->sent : 0);
    s->request_msec = (uint64_t) ngx_max(ms, 0);
    s->response_msec = -1;
    s->cache = cache_index(r);
    s->now = (uint64_t) tp->sec * 1000 + tp->msec;
}


/* the server zone keys of a request: Host (with filter_by_host, unless
   filters are off in the scope), and server_name ("_" without one) */
bool
host_key(ngx_http_request_t *r, ngx_http_vts_loc_conf_t *vlcf, ngx_str_t *host)
{
    *host = r->headers_in.server;
    return vlcf->filter_by_host && vlcf->filter && host->len;
}


ngx_str_t
server_key(ngx_http_request_t *r)
{
    ngx_http_core_srv_conf_t *cscf = (ngx_http_core_srv_conf_t *)
        ngx_http_get_module_srv_conf(r, ngx_http_core_module);
    ngx_str_t server = cscf->server_name;

    if (server.len == 0) {
        ngx_str_set(&server, "_");
    }
    return server;
}


/* by Host (under its cap), else by server_name, else into the sum only */
void
count_server(ngx_http_request_t *r, ngx_http_vts_store_t *store,
    ngx_http_vts_loc_conf_t *vlcf, sample_t *s)
{
    ngx_http_vts_node_t *node = nullptr;
    ngx_str_t host;

    if (host_key(r, vlcf, &host)) {
        node = ngx_http_vts_store_get(store, NGX_HTTP_VTS_SERVER, &empty_group,
                                      &host, vlcf->buckets,
                                      NGX_HTTP_VTS_CAP_HOST);
    }
    if (node == nullptr) {
        ngx_str_t server = server_key(r);
        node = ngx_http_vts_store_get(store, NGX_HTTP_VTS_SERVER, &empty_group,
                                      &server, vlcf->buckets,
                                      NGX_HTTP_VTS_CAP_NONE);
    }
    if (node == nullptr) {
        if (!s->ignored) {
            count(ngx_http_vts_store_overflow(store), s);
        }
        return;
    }
    count_node(node, s);
    if (store->codes && !s->ignored) {
        count_code(store->codes, node, s);
    }
}


/* remembers the first (NAME, KEY) pairs of a request; true if seen */
struct seen_t {
    ngx_str_t   keys[NGX_HTTP_VTS_DEDUP_MAX];
    ngx_str_t   names[NGX_HTTP_VTS_DEDUP_MAX];
    ngx_uint_t  n = 0;

    bool check(ngx_str_t &key, ngx_str_t &name) {
        for (ngx_uint_t j = 0; j < n; j++) {
            if (ngx_http_vts_str_eq(keys[j], &key)
                && ngx_http_vts_str_eq(names[j], &name))
            {
                return true;
            }
        }
        if (n < NGX_HTTP_VTS_DEDUP_MAX) {
            keys[n] = key;
            names[n] = name;
            n++;
        }
        return false;
    }
};


void
count_filters(ngx_http_request_t *r, ngx_http_vts_store_t *store,
    ngx_http_vts_loc_conf_t *vlcf, sample_t *s)
{
    ngx_http_vts_filter_t *f = (ngx_http_vts_filter_t *) vlcf->filters->elts;
    seen_t seen;

    for (ngx_uint_t i = 0; i < vlcf->filters->nelts; i++) {
        ngx_str_t key, name;

        if (ngx_http_complex_value(r, &f[i].key, &key) != NGX_OK
            || ngx_http_complex_value(r, &f[i].name, &name) != NGX_OK
            || key.len == 0)
        {
            continue;
        }
        if (vlcf->filter_check_duplicate && seen.check(key, name)) {
            continue;
        }
        count_node(ngx_http_vts_store_get(store, NGX_HTTP_VTS_FILTER, &name,
                       &key, vlcf->buckets,
                       ngx_http_vts_store_filter_class(store, &name)), s);
    }
}


/* the peer that produced the response: the last state with a peer */
void
count_upstream(ngx_http_request_t *r, ngx_http_vts_store_t *store,
    ngx_http_vts_loc_conf_t *vlcf, sample_t *s)
{
    ngx_http_upstream_state_t *st =
        (ngx_http_upstream_state_t *) r->upstream_states->elts;
    ngx_http_upstream_state_t *last = nullptr;

    for (ngx_uint_t i = r->upstream_states->nelts; i > 0; i--) {
        if (st[i - 1].peer) {
            last = &st[i - 1];
            break;
        }
    }
    if (last == nullptr) {
        return;
    }

    ngx_str_t group = ngx_http_vts_nogroups;
    ngx_http_upstream_srv_conf_t *uscf =
        r->upstream ? r->upstream->upstream : nullptr;
    if (uscf && (uscf->flags & NGX_HTTP_UPSTREAM_CREATE)) {
        group = uscf->host;
    }
    ngx_str_t peer = *last->peer;
    sample_t us = *s;
    us.response_msec = last->response_time != (ngx_msec_t) -1
                       ? (int64_t) last->response_time : 0;
    if (last->status) {
        us.status = last->status;
    }
    count_node(ngx_http_vts_store_get(store, NGX_HTTP_VTS_UPSTREAM, &group,
                                      &peer, vlcf->buckets,
                                      NGX_HTTP_VTS_CAP_NONE), &us);
}


void
count_cache(ngx_http_request_t *r, ngx_http_vts_store_t *store, sample_t *s)
{
#if (NGX_HTTP_CACHE)
    if (r->cache && r->cache->file_cache && r->cache->file_cache->shm_zone) {
        ngx_str_t name = r->cache->file_cache->shm_zone->shm.name;
        count_node(ngx_http_vts_store_get(store, NGX_HTTP_VTS_CACHE,
                                          &empty_group, &name, nullptr,
                                          NGX_HTTP_VTS_CAP_NONE), s);
    }
#endif
}

} // namespace


ngx_http_vts_node_t *
ngx_http_vts_own_server(ngx_http_request_t *r, ngx_http_vts_store_t *store,
    ngx_http_vts_loc_conf_t *vlcf)
{
    ngx_str_t key;

    /* a Host-keyed request reads its Host's own entry only: without one
       (a new Host, or one beyond the Host cap, counted in the server_name
       zone) it has no count yet; the server_name zone is no Host's
       budget (issue 26: 3,000 new Hosts spent it, then a never-seen Host
       got the limit code on its first request) */
    if (!host_key(r, vlcf, &key)) {
        key = server_key(r);
    }
    return ngx_http_vts_store_find(store, NGX_HTTP_VTS_SERVER, &empty_group,
                                   &key);
}


ngx_int_t
ngx_http_vts_log_handler(ngx_http_request_t *r)
{
    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_main_conf(r);
    ngx_http_vts_store_t *store = &vmcf->store;

    if (!vmcf->enable || !ngx_http_vts_store_ready(store)) {
        return NGX_DECLINED;
    }
    ngx_http_vts_loc_conf_t *vlcf = ngx_http_vts_loc_conf(r);
    if (!vlcf->enable || vlcf->bypass_stats) {
        return NGX_DECLINED;
    }

    ngx_http_vts_store_sync_worker(store);

    sample_t s;
    take_sample(r, &s);
    s.ignored = vlcf->ignore_status
                && s.status >= 100 && s.status < 600
                && (vlcf->ignore_status & (1 << (s.status / 100)));

    count_server(r, store, vlcf, &s);
    if (vlcf->filter && vlcf->filters && vlcf->filters->nelts) {
        count_filters(r, store, vlcf, &s);
    }
    if (vmcf->stats_by_upstream
        && r->upstream_states && r->upstream_states->nelts)
    {
        count_upstream(r, store, vlcf, &s);
    }
    count_cache(r, store, &s);
    return NGX_DECLINED;
}
