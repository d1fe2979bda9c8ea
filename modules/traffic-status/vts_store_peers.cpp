/*
 * traffic-status: the peer lifecycle of upstream{} entries (see
 * vts_store.h): listed, removed (kept, idle expiry, a cap per upstream),
 * unlinked.  Worker 0's sweep (vts_peers.cpp reads the peer lists) calls
 * ngx_http_vts_store_sweep_peers; the views keep removed peers by
 * ngx_http_vts_store_retained, the same rule.
 */

#include "vts_store_zone.h"

#include <algorithm>

namespace {

/* when a removed peer's entry retires: at its removal or at its last
   request, whichever is later (a peer in the middle of long requests when
   DNS dropped it is still busy) */
uint64_t
retired_at(ngx_http_vts_node_t *n, uint64_t now)
{
    uint64_t removed = ngx_http_vts_load(&n->peer_removed);
    uint64_t last = ngx_http_vts_load(&n->last_msec);

    if (removed == 0) {
        removed = now;
    }
    return removed > last ? removed : last;
}


bool
expired(ngx_http_vts_store_t *store, uint64_t at, uint64_t now)
{
    return store->retain_max == 0
           || (now > at && now - at >= store->retain_msec);
}


int
str_cmp(ngx_str_t a, ngx_str_t b)
{
    return ngx_memn2cmp(a.data, b.data, a.len, b.len);
}


ngx_http_vts_listed_t *
find_listed(ngx_http_vts_listed_t *listed, ngx_uint_t n, ngx_str_t group)
{
    auto it = std::lower_bound(listed, listed + n, group,
        [](const ngx_http_vts_listed_t &l, ngx_str_t g) {
            return str_cmp(l.group, g) < 0;
        });
    return it != listed + n && str_cmp(it->group, group) == 0 ? it : nullptr;
}


/* the index of name among l's sorted names, or -1 */
ngx_int_t
find_name(ngx_http_vts_listed_t *l, ngx_str_t name)
{
    ngx_str_t *end = l->names + l->n;
    ngx_str_t *it = std::lower_bound(l->names, end, name,
        [](const ngx_str_t &a, ngx_str_t b) { return str_cmp(a, b) < 0; });

    return it != end && str_cmp(*it, name) == 0 ? it - l->names : -1;
}


/* a listed peer's entry: back from removed (listed again: new again), or
   joined since the last sweep */
void
stamp_listed(ngx_http_vts_node_t *n, bool joined, uint64_t now)
{
    if (ngx_http_vts_load(&n->peer_removed)) {
        ngx_http_vts_set_u64(&n->peer_removed, 0);
        ngx_http_vts_set_u64(&n->peer_added, now);

    } else if (joined) {
        ngx_http_vts_set_u64(&n->peer_added, now);
    }
}


/*
 * Stamps every upstream{} entry listed or removed; appends the removed
 * ones to *removed (nullptr after an allocation failure: nothing is
 * unlinked then).
 */
void
mark_locked(ngx_http_vts_store_t *store, ngx_http_vts_listed_t *listed,
    ngx_uint_t nlisted, uint64_t now, ngx_array_t *removed)
{
    ngx_http_vts_shctx_t *sh = store->sh;

    for (ngx_queue_t *q = ngx_queue_head(&sh->queue);
         q != ngx_queue_sentinel(&sh->queue); q = ngx_queue_next(q))
    {
        ngx_http_vts_node_t *n = ngx_queue_data(q, ngx_http_vts_node_t, queue);
        ngx_str_t group = ngx_http_vts_node_group(n);

        if (n->kind != NGX_HTTP_VTS_UPSTREAM
            || ngx_http_vts_is_nogroups(group))
        {
            continue;
        }
        ngx_http_vts_listed_t *l = find_listed(listed, nlisted, group);
        ngx_int_t i = l ? find_name(l, ngx_http_vts_node_name(n)) : -1;

        if (i >= 0) {
            l->flags[i] |= NGX_HTTP_VTS_PEER_HAS_NODE;
            stamp_listed(n, l->flags[i] & NGX_HTTP_VTS_PEER_JOINED, now);
            continue;
        }
        if (ngx_http_vts_load(&n->peer_removed) == 0) {
            ngx_http_vts_set_u64(&n->peer_removed, now);
#if (NGX_DEBUG)
            ngx_str_t name = ngx_http_vts_node_name(n);
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "vts: peer \"%V\" left \"%V\"", &name, &group);
#endif
        }
        ngx_http_vts_retired_t *slot =
            (ngx_http_vts_retired_t *) ngx_array_push(removed);
        if (slot == nullptr) {
            removed->nelts = 0;
            return;
        }
        slot->node = n;
    }
}


/* unlinks the removed entries that are expired or over their upstream's
   cap; removed[] is sorted by group first */
void
retire_locked(ngx_http_vts_store_t *store, ngx_array_t *removed, uint64_t now)
{
    ngx_http_vts_retired_t *r = (ngx_http_vts_retired_t *) removed->elts;
    ngx_uint_t n = removed->nelts;

    std::sort(r, r + n, [](const ngx_http_vts_retired_t &a,
                           const ngx_http_vts_retired_t &b) {
        return str_cmp(ngx_http_vts_node_group(a.node),
                       ngx_http_vts_node_group(b.node)) < 0;
    });

    for (ngx_uint_t first = 0, last; first < n; first = last) {
        ngx_str_t group = ngx_http_vts_node_group(r[first].node);
        for (last = first + 1;
             last < n
             && ngx_http_vts_str_eq(ngx_http_vts_node_group(r[last].node),
                                    &group);
             last++) { /* void */ }

        ngx_uint_t capped;
        ngx_uint_t kept = ngx_http_vts_store_retained(store, r + first,
                                                      last - first, now,
                                                      &capped);
        for (ngx_uint_t i = first + kept; i < last; i++) {
#if (NGX_DEBUG)
            ngx_str_t name = ngx_http_vts_node_name(r[i].node);
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "vts: removed peer \"%V\" of \"%V\" unlinked",
                           &name, &group);
#endif
            ngx_http_vts_unlink_locked(store, r[i].node);
        }
        store->sh->dropped_evicted += capped;
    }
}


/* may the sweep make this listed peer's entry?  A configured peer (a
   server line's own address) may take the zone's last eighth, which
   client-keyed entries never take: it is kept for such entries (issue 26:
   after a flood of filter keys, the peers beyond the first ~30 of a 1m
   zone were never counted).  A peer DNS added since the last sweep may
   not take the last quarter: a name answering hundreds of addresses must
   not fill the zone */
bool
may_create(uint8_t flags, ngx_slab_pool_t *pool, ngx_uint_t pages)
{
    if (flags & NGX_HTTP_VTS_PEER_HAS_NODE) {
        return false;
    }
    if (flags & NGX_HTTP_VTS_PEER_CONFIGURED) {
        return true;
    }
    return (flags & NGX_HTTP_VTS_PEER_JOINED)
           && pool->pfree * NGX_HTTP_VTS_RESTORE_RESERVE >= pages;
}


/* the entries of listed peers that have none yet and may (may_create);
   a peer that joined is stamped new */
void
create_listed_locked(ngx_http_vts_store_t *store,
    ngx_http_vts_listed_t *listed, ngx_uint_t nlisted, ngx_array_t *buckets,
    uint64_t now)
{
    ngx_slab_pool_t *pool = store->shpool;
    ngx_uint_t pages = (pool->end - pool->start) >> ngx_pagesize_shift;

    for (ngx_uint_t g = 0; g < nlisted; g++) {
        ngx_http_vts_listed_t *l = &listed[g];
        for (ngx_uint_t i = 0; i < l->n; i++) {
            /* (the request path cuts longer keys: it would count elsewhere) */
            if (!may_create(l->flags[i], pool, pages)
                || l->group.len > NGX_HTTP_VTS_NAME_MAX
                || l->names[i].len > NGX_HTTP_VTS_NAME_MAX)
            {
                continue;
            }
            uint32_t hash = ngx_http_vts_key_hash(NGX_HTTP_VTS_UPSTREAM,
                                                  &l->group, &l->names[i]);
            ngx_http_vts_node_t *n = ngx_http_vts_create_locked(store,
                NGX_HTTP_VTS_UPSTREAM, &l->group, &l->names[i], hash,
                buckets);
            if (n == nullptr) {
                return;
            }
            if (l->flags[i] & NGX_HTTP_VTS_PEER_JOINED) {
                n->peer_added = now;
            }
        }
    }
}

} // namespace


ngx_uint_t
ngx_http_vts_store_retained(ngx_http_vts_store_t *store,
    ngx_http_vts_retired_t *r, ngx_uint_t n, uint64_t now,
    ngx_uint_t *capped)
{
    for (ngx_uint_t i = 0; i < n; i++) {
        r[i].at = retired_at(r[i].node, now);
    }
    /* (std::partition: stable_partition may allocate) */
    ngx_http_vts_retired_t *live = std::partition(r, r + n,
        [&](const ngx_http_vts_retired_t &x) {
            return !expired(store, x.at, now);
        });
    ngx_uint_t fresh = live - r;

    /* newest first; ties by name, so every view keeps the same ones */
    std::sort(r, live, [](const ngx_http_vts_retired_t &a,
                          const ngx_http_vts_retired_t &b) {
        if (a.at != b.at) {
            return a.at > b.at;
        }
        return str_cmp(ngx_http_vts_node_name(a.node),
                       ngx_http_vts_node_name(b.node)) < 0;
    });

    ngx_uint_t kept = ngx_min(fresh, store->retain_max);
    *capped = fresh - kept;
    return kept;
}


void
ngx_http_vts_store_sweep_peers(ngx_http_vts_store_t *store,
    ngx_http_vts_listed_t *listed, ngx_uint_t n, bool create,
    ngx_array_t *buckets, ngx_pool_t *pool)
{
    ngx_array_t removed;

    if (ngx_array_init(&removed, pool, 64, sizeof(ngx_http_vts_retired_t))
        != NGX_OK)
    {
        return;
    }
    uint64_t now = ngx_http_vts_now_msec();

    ngx_shmtx_lock(&store->shpool->mutex);
    mark_locked(store, listed, n, now, &removed);
    retire_locked(store, &removed, now);
    /* the pages of what churn unlinked come back after the grace period,
       whether or not new entries are made */
    ngx_http_vts_graveyard_collect_locked(store);
    if (create) {
        create_listed_locked(store, listed, n, buckets, now);
    }
    ngx_shmtx_unlock(&store->shpool->mutex);
}
