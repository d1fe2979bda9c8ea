/*
 * traffic-status: the store's read side.  Snapshots for the views, one
 * entry's counters for the variables, reset / delete for the control
 * endpoint, restore for the dump, and the scopes (what a control group or
 * a set_by_filter GROUP names).
 */

#include "vts_store_zone.h"
#include "vts_out.h"

#include <algorithm>

namespace {

const ngx_http_vts_scope_t  scopes[] = {
    { ngx_string("server"), NGX_HTTP_VTS_SERVER,
      NGX_HTTP_VTS_UPSTREAMS_ANY, false },
    { ngx_string("filter"), NGX_HTTP_VTS_FILTER,
      NGX_HTTP_VTS_UPSTREAMS_ANY, true },
    { ngx_string("upstream@alone"), NGX_HTTP_VTS_UPSTREAM,
      NGX_HTTP_VTS_UPSTREAMS_ALONE, false },
    { ngx_string("upstream@group"), NGX_HTTP_VTS_UPSTREAM,
      NGX_HTTP_VTS_UPSTREAMS_GROUPS, true },
    { ngx_string("cache"), NGX_HTTP_VTS_CACHE,
      NGX_HTTP_VTS_UPSTREAMS_ANY, false },
    { ngx_string("*"), 0, NGX_HTTP_VTS_UPSTREAMS_ANY, false },
};


void
stats_reset(ngx_http_vts_stats_t *st)
{
    uint64_t *p = (uint64_t *) st;
    size_t n = offsetof(ngx_http_vts_stats_t, nbuckets) / sizeof(uint64_t);

    for (size_t i = 0; i < n; i++) {
        ngx_http_vts_set_u64(&p[i], 0);
    }
    for (size_t i = 0; i < NGX_HTTP_VTS_BUCKET_MAX; i++) {
        ngx_http_vts_set_u64(&st->req_buckets[i], 0);
        ngx_http_vts_set_u64(&st->resp_buckets[i], 0);
    }
    ngx_http_vts_set_u64(&st->req_overflow, 0);
    ngx_http_vts_set_u64(&st->resp_overflow, 0);
}


/* snapshot order: kind, group, name */
bool
node_less(ngx_http_vts_node_t *a, ngx_http_vts_node_t *b)
{
    if (a->kind != b->kind) {
        return a->kind < b->kind;
    }
    ngx_str_t ga = ngx_http_vts_node_group(a), gb = ngx_http_vts_node_group(b);
    int rc = ngx_memn2cmp(ga.data, gb.data, ga.len, gb.len);
    if (rc != 0) {
        return rc < 0;
    }
    ngx_str_t na = ngx_http_vts_node_name(a), nb = ngx_http_vts_node_name(b);
    return ngx_memn2cmp(na.data, nb.data, na.len, nb.len) < 0;
}


int
group_cmp(ngx_http_vts_node_t *n, ngx_str_t group)
{
    ngx_str_t g = ngx_http_vts_node_group(n);
    return ngx_memn2cmp(g.data, group.data, g.len, group.len);
}

} // namespace


/* ----------------------------------------------------------------------
 * scopes (control groups, set_by_filter groups)
 */

const ngx_http_vts_scope_t *
ngx_http_vts_scope_find(ngx_str_t *name)
{
    for (auto &s : scopes) {
        if (ngx_http_vts_str_eq(*name, &s.name)) {
            return &s;
        }
    }
    return nullptr;
}


bool
ngx_http_vts_is_nogroups(ngx_str_t group)
{
    return ngx_http_vts_str_eq(group, &ngx_http_vts_nogroups);
}


bool
ngx_http_vts_scope_has(const ngx_http_vts_scope_t *scope,
    ngx_http_vts_node_t *n)
{
    if (scope->kind == 0) {
        return true;
    }
    if (n->kind != scope->kind) {
        return false;
    }
    switch (scope->upstreams) {
    case NGX_HTTP_VTS_UPSTREAMS_ALONE:
        return ngx_http_vts_is_nogroups(ngx_http_vts_node_group(n));
    case NGX_HTTP_VTS_UPSTREAMS_GROUPS:
        return !ngx_http_vts_is_nogroups(ngx_http_vts_node_group(n));
    default:
        return true;
    }
}


/* ----------------------------------------------------------------------
 * reading, resetting, deleting, restoring
 */

void
ngx_http_vts_read_stats(ngx_http_vts_stats_t *dst,
    const ngx_http_vts_stats_t *src)
{
    const uint64_t *s = (const uint64_t *) src;
    uint64_t *d = (uint64_t *) dst;

    for (size_t i = 0; i < sizeof(*dst) / sizeof(uint64_t); i++) {
        d[i] = ngx_http_vts_load(&s[i]);
    }
    /* the store never pauses a render (its callers may hold the zone
       mutex): the views check their time slice in their own loops */
}


bool
ngx_http_vts_store_read(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, ngx_http_vts_stats_t *st)
{
    uint32_t hash = ngx_http_vts_key_hash(kind, group, name);

    ngx_shmtx_lock(&store->shpool->mutex);
    ngx_http_vts_node_t *n =
        ngx_http_vts_lookup_locked(store->sh, kind, group, name, hash);
    if (n) {
        ngx_http_vts_read_stats(st, &n->stats);
    }
    ngx_shmtx_unlock(&store->shpool->mutex);
    return n != nullptr;
}


ngx_uint_t
ngx_http_vts_store_apply(ngx_http_vts_store_t *store, ngx_http_vts_op_e op,
    ngx_http_vts_match_pt match, void *data)
{
    ngx_http_vts_shctx_t *sh = store->sh;
    ngx_uint_t counts = 0;

    ngx_shmtx_lock(&store->shpool->mutex);
    ngx_queue_t *q = ngx_queue_head(&sh->queue);
    while (q != ngx_queue_sentinel(&sh->queue)) {
        ngx_http_vts_node_t *n = ngx_queue_data(q, ngx_http_vts_node_t, queue);
        q = ngx_queue_next(q);
        if (!match(n, data)) {
            continue;
        }
        counts++;
        if (op == NGX_HTTP_VTS_RESET) {
            stats_reset(&n->stats);
            uint64_t *codes = ngx_http_vts_node_codes(n);
            for (ngx_uint_t k = 0; k < n->ncodes; k++) {
                ngx_http_vts_set_u64(&codes[k], 0);
            }
        } else {
            ngx_http_vts_unlink_locked(store, n);
        }
    }
    ngx_shmtx_unlock(&store->shpool->mutex);
    return counts;
}


ngx_int_t
ngx_http_vts_store_restore(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, const ngx_http_vts_stats_t *st,
    uint8_t cap_class)
{
    ngx_slab_pool_t *pool = store->shpool;
    ngx_uint_t pages = (pool->end - pool->start) >> ngx_pagesize_shift;

    if (pool->pfree * NGX_HTTP_VTS_RESTORE_RESERVE < pages) {
        return NGX_ABORT;
    }

    uint32_t hash = ngx_http_vts_key_hash(kind, group, name);
    ngx_http_vts_node_t *n =
        ngx_http_vts_lookup_locked(store->sh, kind, group, name, hash);

    if (n == nullptr) {
        n = ngx_http_vts_create_capped_locked(store, kind, group, name, hash,
                                              cap_class);
        if (n == nullptr) {
            return NGX_DECLINED;
        }
    }
    n->stats = *st;
    return NGX_OK;
}


void
ngx_http_vts_store_set_start(ngx_http_vts_store_t *store, uint64_t start_msec)
{
    store->sh->start_msec = start_msec;
}


namespace {

/* adds src's counters into a live node's (workers add concurrently); the
   moving-average samples stay the live ones */
void
stats_add(ngx_http_vts_stats_t *dst, const ngx_http_vts_stats_t *src)
{
    ngx_http_vts_add(&dst->requests, src->requests);
    ngx_http_vts_add(&dst->in_bytes, src->in_bytes);
    ngx_http_vts_add(&dst->out_bytes, src->out_bytes);
    for (int k = 0; k < 5; k++) {
        ngx_http_vts_add(&dst->responses[k], src->responses[k]);
    }
    for (int k = 0; k < NGX_HTTP_VTS_CACHE_N; k++) {
        ngx_http_vts_add(&dst->cache[k], src->cache[k]);
    }
    ngx_http_vts_add(&dst->request_msec_total, src->request_msec_total);
    ngx_http_vts_add(&dst->response_msec_total, src->response_msec_total);

    if (dst->nbuckets != src->nbuckets
        || ngx_memcmp(dst->bucket_msec, src->bucket_msec,
                      src->nbuckets * sizeof(uint64_t)) != 0)
    {
        return;                 /* other bounds: the histogram can't add */
    }
    for (uint32_t k = 0; k < src->nbuckets; k++) {
        ngx_http_vts_add(&dst->req_buckets[k], src->req_buckets[k]);
        ngx_http_vts_add(&dst->resp_buckets[k], src->resp_buckets[k]);
    }
    ngx_http_vts_add(&dst->req_overflow, src->req_overflow);
    ngx_http_vts_add(&dst->resp_overflow, src->resp_overflow);
}

} // namespace


ngx_int_t
ngx_http_vts_store_merge(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, const ngx_http_vts_stats_t *st,
    uint8_t cap_class)
{
    uint32_t hash = ngx_http_vts_key_hash(kind, group, name);

    ngx_shmtx_lock(&store->shpool->mutex);
    ngx_http_vts_node_t *n =
        ngx_http_vts_lookup_locked(store->sh, kind, group, name, hash);
    ngx_int_t rc = NGX_OK;

    if (n) {
        stats_add(&n->stats, st);
    } else {
        /* a new node: the restore's rules (caps, reserve), then a copy
           made before any other worker can see the node */
        rc = ngx_http_vts_store_restore(store, kind, group, name, st,
                                        cap_class);
    }
    ngx_shmtx_unlock(&store->shpool->mutex);
    return rc;
}


uint64_t
ngx_http_vts_store_upgrade_from(ngx_http_vts_store_t *store)
{
    return __atomic_load_n(&store->sh->upgrade_from, __ATOMIC_ACQUIRE);
}


void
ngx_http_vts_store_set_upgrade_from(ngx_http_vts_store_t *store, uint64_t pid)
{
    __atomic_store_n(&store->sh->upgrade_from, pid, __ATOMIC_RELEASE);
}


uint64_t
ngx_http_vts_average(const ngx_http_vts_sample_t *samples, uint64_t pos,
    ngx_uint_t method, ngx_msec_t period, uint64_t now)
{
    uint64_t n = ngx_min(pos, (uint64_t) NGX_HTTP_VTS_AVG_SAMPLES);
    uint64_t sum = 0, weights = 0;

    for (uint64_t k = 0; k < n; k++) {
        /* k = 0 is the newest sample */
        const ngx_http_vts_sample_t *s =
            &samples[(pos - 1 - k) % NGX_HTTP_VTS_AVG_SAMPLES];
        uint64_t t = ngx_http_vts_load(&s->time);
        uint64_t ms = ngx_http_vts_load(&s->msec);

        if (t == 0 || (period && t + period < now)) {
            continue;
        }
        uint64_t w = (method == NGX_HTTP_VTS_AVG_WMA) ? n - k : 1;
        sum += ms * w;
        weights += w;
    }
    return weights ? sum / weights : 0;
}


/* ----------------------------------------------------------------------
 * snapshots
 */

ngx_int_t
ngx_http_vts_store_snapshot(ngx_http_vts_store_t *store, ngx_pool_t *pool,
    ngx_http_vts_snapshot_t *s, bool sorted)
{
    ngx_http_vts_shctx_t *sh = store->sh;
    ngx_slab_pool_t *shpool = store->shpool;

    ngx_memzero(s, sizeof(*s));
    s->max_size = store->shm_zone->shm.size;
    s->zone_name = store->shm_zone->shm.name;
    s->overflow = &sh->overflow;

    ngx_shmtx_lock(&shpool->mutex);

    /* under the mutex, as unlinking bumps it: a node unlinked after this
       moment makes the store's generation differ from this one */
    s->generation = sh->generation;
    s->taken = ngx_current_msec;
    s->used_node = sh->nodes;
    s->dropped_full = sh->dropped_full;
    s->dropped_limit = sh->dropped_limit;
    s->dropped_evicted = sh->dropped_evicted;
    s->start_msec = sh->start_msec;
    s->used_size = sh->used_bytes;
    s->free_size = shpool->pfree * ngx_pagesize;
    s->nodes = (ngx_http_vts_node_t **) ngx_palloc(pool,
        sizeof(ngx_http_vts_node_t *) * (sh->nodes + 1));
    if (s->nodes == nullptr) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_ERROR;
    }
    for (ngx_queue_t *q = ngx_queue_head(&sh->queue);
         q != ngx_queue_sentinel(&sh->queue) && s->n < sh->nodes;
         q = ngx_queue_next(q))
    {
        s->nodes[s->n++] = ngx_queue_data(q, ngx_http_vts_node_t, queue);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (sorted) {
        std::sort(s->nodes, s->nodes + s->n, node_less);
    }
    return NGX_OK;
}


/* [first, last) of the nodes of one kind in a sorted snapshot */
void
ngx_http_vts_snapshot_range(ngx_http_vts_snapshot_t *s, uint8_t kind,
    ngx_uint_t *first, ngx_uint_t *last)
{
    ngx_uint_t f = 0;
    while (f < s->n && s->nodes[f]->kind < kind) {
        f++;
    }
    ngx_uint_t l = f;
    while (l < s->n && s->nodes[l]->kind == kind) {
        l++;
    }
    *first = f;
    *last = l;
}


ngx_http_vts_node_t *
ngx_http_vts_snapshot_find(ngx_http_vts_snapshot_t *s, uint8_t kind,
    ngx_str_t group, ngx_str_t name)
{
    ngx_uint_t lo = 0, hi = s->n;

    while (lo < hi) {
        ngx_uint_t mid = (lo + hi) / 2;
        ngx_http_vts_node_t *n = s->nodes[mid];
        int rc;
        if (n->kind != kind) {
            rc = n->kind < kind ? -1 : 1;
        } else {
            ngx_str_t g = ngx_http_vts_node_group(n);
            rc = ngx_memn2cmp(g.data, group.data, g.len, group.len);
            if (rc == 0) {
                ngx_str_t nm = ngx_http_vts_node_name(n);
                rc = ngx_memn2cmp(nm.data, name.data, nm.len, name.len);
            }
        }
        if (rc == 0) {
            return n;
        }
        if (rc < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return nullptr;
}


/* [first, last) of the nodes of kind and group in a sorted snapshot */
void
ngx_http_vts_snapshot_group(ngx_http_vts_snapshot_t *s, uint8_t kind,
    ngx_str_t group, ngx_uint_t *first, ngx_uint_t *last)
{
    auto before = [&](ngx_http_vts_node_t *n) {
        return n->kind < kind || (n->kind == kind && group_cmp(n, group) < 0);
    };
    auto within = [&](ngx_http_vts_node_t *n) {
        return n->kind == kind && group_cmp(n, group) == 0;
    };
    ngx_http_vts_node_t **end = s->nodes + s->n;
    ngx_http_vts_node_t **f = std::partition_point(s->nodes, end, before);
    ngx_http_vts_node_t **l = std::partition_point(f, end, within);

    *first = f - s->nodes;
    *last = l - s->nodes;
}
