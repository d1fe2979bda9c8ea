/*
 * traffic-status: the store's zone and request path (see vts_store.h
 * for who calls what).
 *
 * Every zone entry ("node") lives in the shared zone and holds its
 * counters as 64-bit words updated with relaxed atomics.  Each worker
 * keeps a direct-mapped cache (hash of the key -> node pointer), so the
 * zone's mutex is taken only to create a node.  Nodes deleted through the
 * control endpoint are unlinked at once but freed only after a grace
 * period, and unlinking bumps a generation counter that makes every
 * worker flush its cache before its next use.
 */

#include "vts_store_zone.h"

#define NGX_HTTP_VTS_CACHE_SLOTS     4096
#define NGX_HTTP_VTS_GRACE_MSEC      10000

const char *ngx_http_vts_cache_names[NGX_HTTP_VTS_CACHE_N] = {
    "miss", "bypass", "expired", "stale", "updating", "revalidated", "hit",
    "scarce"
};

const char *ngx_http_vts_class_names[5] = {
    "1xx", "2xx", "3xx", "4xx", "5xx"
};

const ngx_str_t  ngx_http_vts_nogroups = ngx_string("::nogroups");


namespace {

struct cache_slot_t {
    ngx_http_vts_node_t  *node;
    uint32_t              hash;
};

cache_slot_t  *worker_cache;
uint64_t       worker_cache_gen;

} // namespace


static bool
node_matches(ngx_http_vts_node_t *n, uint8_t kind, ngx_str_t *group,
    ngx_str_t *name)
{
    return n->kind == kind && n->group_len == group->len
           && n->name_len == name->len
           && ngx_memcmp(n->data, group->data, group->len) == 0
           && ngx_memcmp(n->data + group->len, name->data, name->len) == 0;
}


/* total order of keys in the rbtree: hash, kind, group, name */
static int
node_cmp(ngx_http_vts_node_t *n, uint32_t hash, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name)
{
    if (hash != n->rb.key) {
        return hash < n->rb.key ? -1 : 1;
    }
    if (kind != n->kind) {
        return kind < n->kind ? -1 : 1;
    }
    if (group->len != n->group_len) {
        return group->len < n->group_len ? -1 : 1;
    }
    if (name->len != n->name_len) {
        return name->len < n->name_len ? -1 : 1;
    }
    int rc = ngx_memcmp(group->data, n->data, group->len);
    if (rc == 0) {
        rc = ngx_memcmp(name->data, n->data + group->len, name->len);
    }
    return rc;
}


ngx_http_vts_node_t *
ngx_http_vts_lookup_locked(ngx_http_vts_shctx_t *sh, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, uint32_t hash)
{
    ngx_rbtree_node_t  *node = sh->rbtree.root;
    ngx_rbtree_node_t  *sentinel = sh->rbtree.sentinel;

    while (node != sentinel) {
        ngx_http_vts_node_t *n = (ngx_http_vts_node_t *) node;
        int rc = node_cmp(n, hash, kind, group, name);
        if (rc == 0) {
            return n;
        }
        node = rc < 0 ? node->left : node->right;
    }
    return nullptr;
}


static void
rbtree_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t  **p;
    ngx_http_vts_node_t *n = (ngx_http_vts_node_t *) node;
    ngx_str_t group = ngx_http_vts_node_group(n);
    ngx_str_t name = ngx_http_vts_node_name(n);

    for ( ;; ) {
        int rc = node_cmp((ngx_http_vts_node_t *) temp, (uint32_t) node->key,
                          n->kind, &group, &name);
        p = (rc < 0) ? &temp->left : &temp->right;
        if (*p == sentinel) {
            break;
        }
        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


size_t
ngx_http_vts_node_size(ngx_http_vts_node_t *n)
{
    u_char *codes = (u_char *) ngx_http_vts_node_codes(n);
    return (size_t) (codes - (u_char *) n) + n->ncodes * sizeof(uint64_t);
}


void
ngx_http_vts_graveyard_collect_locked(ngx_http_vts_store_t *store)
{
    ngx_http_vts_node_t  **pp = &store->sh->graveyard;

    while (*pp) {
        ngx_http_vts_node_t *n = *pp;
        if ((ngx_msec_int_t) (ngx_current_msec - n->freed_at)
            >= NGX_HTTP_VTS_GRACE_MSEC)
        {
            *pp = n->free_next;
            store->sh->used_bytes -= ngx_http_vts_node_size(n);
            store->sh->buried--;
            ngx_slab_free_locked(store->shpool, n);
            continue;
        }
        pp = &n->free_next;
    }
}


/* the default cap's count slot of a filter group: its own, else a free
   one (claimed when counting), else (table crowded) the last probed,
   shared with another group */
static uint32_t *
group_count(ngx_http_vts_shctx_t *sh, ngx_str_t group, bool claim)
{
    uint32_t h = ngx_crc32_short(group.data, group.len) | 1;
    ngx_uint_t first_free = NGX_HTTP_VTS_GROUP_SLOTS, k = 0;

    for (ngx_uint_t probe = 0; probe < 8; probe++) {
        k = (h + probe) % NGX_HTTP_VTS_GROUP_SLOTS;
        if (sh->group_hash[k] == h) {
            return &sh->group_count[k];
        }
        if (sh->group_count[k] == 0 && first_free == NGX_HTTP_VTS_GROUP_SLOTS) {
            first_free = k;
        }
    }
    if (first_free < NGX_HTTP_VTS_GROUP_SLOTS) {
        if (claim) {
            sh->group_hash[first_free] = h;
        }
        return &sh->group_count[first_free];      /* 0: a new group */
    }
    return &sh->group_count[k];
}


/* the only place that decodes a cap class: its node count and its cap */
static uint64_t *
cap_count(ngx_http_vts_shctx_t *sh, uint8_t cls)
{
    if (cls == NGX_HTTP_VTS_CAP_HOST) {
        return &sh->host_nodes;
    }
    if (cls >= NGX_HTTP_VTS_CAP_FILTER) {
        return &sh->filter_nodes[cls - NGX_HTTP_VTS_CAP_FILTER];
    }
    return nullptr;
}


static bool
cap_reached(ngx_http_vts_store_t *store, uint8_t cls, ngx_str_t *group)
{
    if (cls == NGX_HTTP_VTS_CAP_GROUP) {
        return *group_count(store->sh, *group, false) >= store->group_max;
    }
    uint64_t *count = cap_count(store->sh, cls);

    if (count == nullptr) {
        return false;
    }
    if (cls == NGX_HTTP_VTS_CAP_HOST) {
        return *count >= store->host_max;
    }
    ngx_http_vts_cap_t *caps = (ngx_http_vts_cap_t *) store->filter_caps->elts;
    return *count >= caps[cls - NGX_HTTP_VTS_CAP_FILTER].max;
}


static void
cap_add(ngx_http_vts_shctx_t *sh, ngx_http_vts_node_t *n, int delta)
{
    if (n->cap_class == NGX_HTTP_VTS_CAP_GROUP) {
        uint32_t *c = group_count(sh, ngx_http_vts_node_group(n), delta > 0);
        if (delta > 0 || *c) {
            *c += delta;
        }
        return;
    }
    uint64_t *count = cap_count(sh, n->cap_class);
    if (count && (delta > 0 || *count)) {
        *count += delta;
    }
}


void
ngx_http_vts_unlink_locked(ngx_http_vts_store_t *store,
    ngx_http_vts_node_t *node)
{
    ngx_http_vts_shctx_t  *sh = store->sh;

    ngx_rbtree_delete(&sh->rbtree, &node->rb);
    ngx_queue_remove(&node->queue);
    node->deleted = 1;
    node->freed_at = ngx_current_msec;
    node->free_next = sh->graveyard;
    sh->graveyard = node;
    sh->buried++;
    sh->nodes--;
    cap_add(sh, node, -1);
    __atomic_fetch_add(&sh->generation, 1, __ATOMIC_RELEASE);
}


static void
stats_init_buckets(ngx_http_vts_stats_t *st, ngx_array_t *buckets)
{
    st->nbuckets = 0;
    if (buckets == nullptr) {
        return;
    }
    uint64_t *b = (uint64_t *) buckets->elts;
    for (ngx_uint_t i = 0; i < buckets->nelts; i++) {
        st->bucket_msec[i] = b[i];
    }
    st->nbuckets = (uint32_t) buckets->nelts;
}


ngx_http_vts_node_t *
ngx_http_vts_create_locked(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, uint32_t hash, ngx_array_t *buckets)
{
    ngx_http_vts_shctx_t  *sh = store->sh;

    if (sh->graveyard) {
        ngx_http_vts_graveyard_collect_locked(store);
    }

    uint16_t ncodes = (kind == NGX_HTTP_VTS_SERVER && store->codes)
                      ? store->codes->n : 0;
    size_t size = ngx_align(offsetof(ngx_http_vts_node_t, data) + group->len
                            + name->len, sizeof(uint64_t))
                  + ncodes * sizeof(uint64_t);
    ngx_http_vts_node_t *n =
        (ngx_http_vts_node_t *) ngx_slab_calloc_locked(store->shpool, size);
    if (n == nullptr) {
        return nullptr;
    }

    n->rb.key = hash;
    n->kind = kind;
    n->group_len = (uint16_t) group->len;
    n->name_len = (uint32_t) name->len;
    n->ncodes = ncodes;
    n->last_msec = ngx_http_vts_now_msec();
    ngx_memcpy(n->data, group->data, group->len);
    ngx_memcpy(n->data + group->len, name->data, name->len);
    stats_init_buckets(&n->stats, buckets);

    ngx_rbtree_insert(&sh->rbtree, &n->rb);
    ngx_queue_insert_tail(&sh->queue, &n->queue);
    sh->nodes++;
    sh->used_bytes += size;
    return n;
}


/* filter_max_node keeps the newest: the least recently updated entry of
   the cap class (of the group, for the default cap) makes room */
static bool
evict_locked(ngx_http_vts_store_t *store, uint8_t cls, ngx_str_t *group)
{
    ngx_http_vts_shctx_t *sh = store->sh;
    ngx_http_vts_node_t *oldest = nullptr;

    for (ngx_queue_t *q = ngx_queue_head(&sh->queue);
         q != ngx_queue_sentinel(&sh->queue); q = ngx_queue_next(q))
    {
        ngx_http_vts_node_t *n = ngx_queue_data(q, ngx_http_vts_node_t, queue);
        if (n->cap_class != cls
            || (cls == NGX_HTTP_VTS_CAP_GROUP
                && !ngx_http_vts_str_eq(ngx_http_vts_node_group(n), group)))
        {
            continue;
        }
        if (oldest == nullptr || n->last_msec < oldest->last_msec) {
            oldest = n;
        }
    }
    if (oldest == nullptr) {
        return false;
    }
    ngx_http_vts_unlink_locked(store, oldest);
    sh->dropped_evicted++;
    return true;
}


/* client-keyed entries (Host-keyed server zones, filter entries) never
   take the last eighth of the zone: it stays for server_name zones,
   upstream peers and caches (issue 26: 250 distinct ?k= values filled the
   default 1m zone for good, and a peer's requests were never counted).
   *evict: a refused filter entry may evict one of its cap's, while fewer
   than 1/64 of the pages wait in the graveyard (a flood must not empty
   the zone faster than the grace period gives pages back) */
static bool
in_reserve_locked(ngx_http_vts_store_t *store, uint8_t cls, bool *evict)
{
    if (cls == NGX_HTTP_VTS_CAP_NONE) {
        return false;
    }
    ngx_http_vts_shctx_t *sh = store->sh;
    if (sh->graveyard) {
        ngx_http_vts_graveyard_collect_locked(store);
    }
    ngx_slab_pool_t *pool = store->shpool;
    ngx_uint_t pages = (pool->end - pool->start) >> ngx_pagesize_shift;
    if (pool->pfree * NGX_HTTP_VTS_CLIENT_RESERVE >= pages) {
        return false;
    }
    *evict = *evict && cls >= NGX_HTTP_VTS_CAP_GROUP
             && sh->buried < ngx_max(pages / 64, 1);
    return true;
}


/* a new node under its cap; a drop is counted (max_node or zone_full).
   Filter entries at their cap evict (request path) or are refused
   (restore: evict false).  A client-keyed entry refused for the zone's
   reserve is a zone_full drop; a filter entry then evicts its cap's
   least recently updated entry, whose page comes back after the grace
   period, so the newest keys get in again */
static ngx_http_vts_node_t *
create_capped_locked(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, uint32_t hash, ngx_array_t *buckets,
    uint8_t cls, bool evict)
{
    ngx_http_vts_shctx_t *sh = store->sh;

    bool evict_one = evict;
    if (in_reserve_locked(store, cls, &evict_one)) {
        if (evict_one) {
            evict_locked(store, cls, group);
        }
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "traffic-status: \"%V\" \"%V\" refused: the zone's "
                       "last eighth is kept", group, name);
        sh->dropped_full++;
        return nullptr;
    }
    if (cap_reached(store, cls, group)
        && !(evict && cls >= NGX_HTTP_VTS_CAP_GROUP
             && evict_locked(store, cls, group)))
    {
        sh->dropped_limit++;
        return nullptr;
    }
    ngx_http_vts_node_t *n = ngx_http_vts_create_locked(store, kind, group,
                                                        name, hash, buckets);
    if (n == nullptr) {
        sh->dropped_full++;
        return nullptr;
    }
    n->cap_class = cls;
    cap_add(sh, n, 1);
    return n;
}


/* a cache miss: find the node, or create it when its cap allows */
static ngx_http_vts_node_t *
get_locked(ngx_http_vts_store_t *store, uint8_t kind, ngx_str_t *group,
    ngx_str_t *name, uint32_t hash, ngx_array_t *buckets, uint8_t cls)
{
    ngx_http_vts_shctx_t *sh = store->sh;
    ngx_http_vts_node_t *n =
        ngx_http_vts_lookup_locked(sh, kind, group, name, hash);

    if (n) {
        return n;
    }
    return create_capped_locked(store, kind, group, name, hash, buckets, cls,
                                true);
}


ngx_http_vts_node_t *
ngx_http_vts_create_capped_locked(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, uint32_t hash, uint8_t cls)
{
    return create_capped_locked(store, kind, group, name, hash, nullptr, cls,
                                false);
}





/* ----------------------------------------------------------------------
 * the zone and the workers
 */

uint64_t
ngx_http_vts_now_msec()
{
    ngx_time_t *tp = ngx_timeofday();
    return (uint64_t) tp->sec * 1000 + tp->msec;
}


ngx_int_t
ngx_http_vts_store_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_vts_store_t *store = (ngx_http_vts_store_t *) shm_zone->data;
    ngx_http_vts_store_t *old = (ngx_http_vts_store_t *) data;

    store->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (old) {
        /* reload with the same name and size: keep every counter */
        store->sh = old->sh;
        return NGX_OK;
    }
    if (shm_zone->shm.exists) {
        store->sh = (ngx_http_vts_shctx_t *) store->shpool->data;
        return NGX_OK;
    }

    ngx_http_vts_shctx_t *sh = (ngx_http_vts_shctx_t *)
        ngx_slab_calloc(store->shpool, sizeof(ngx_http_vts_shctx_t));
    if (sh == nullptr) {
        return NGX_ERROR;
    }
    store->sh = sh;
    store->shpool->data = sh;
    /* a full zone is expected under attack: count it, don't log it */
    store->shpool->log_nomem = 0;

    ngx_rbtree_init(&sh->rbtree, &sh->sentinel, rbtree_insert);
    ngx_queue_init(&sh->queue);
    sh->start_msec = ngx_http_vts_now_msec();

    size_t len = sizeof(" in vhost_traffic_status zone \"\"")
                 + shm_zone->shm.name.len;
    store->shpool->log_ctx = (u_char *) ngx_slab_alloc(store->shpool, len);
    if (store->shpool->log_ctx) {
        ngx_sprintf(store->shpool->log_ctx,
                    " in vhost_traffic_status zone \"%V\"%Z",
                    &shm_zone->shm.name);
    }

    if (store->on_create) {
        store->on_create(store, store->on_create_data, shm_zone->shm.log);
    }
    return NGX_OK;
}


ngx_int_t
ngx_http_vts_store_init_worker(ngx_http_vts_store_t *store, ngx_cycle_t *cycle)
{
    worker_cache = (cache_slot_t *) ngx_pcalloc(cycle->pool,
        sizeof(cache_slot_t) * NGX_HTTP_VTS_CACHE_SLOTS);
    if (worker_cache == nullptr) {
        return NGX_ERROR;
    }
    worker_cache_gen = __atomic_load_n(&store->sh->generation,
                                       __ATOMIC_ACQUIRE);
    return NGX_OK;
}


uint64_t
ngx_http_vts_store_generation(ngx_http_vts_store_t *store)
{
    return __atomic_load_n(&store->sh->generation, __ATOMIC_ACQUIRE);
}


/* before a request's lookups: forget the cache when a node was unlinked */
void
ngx_http_vts_store_sync_worker(ngx_http_vts_store_t *store)
{
    uint64_t gen = __atomic_load_n(&store->sh->generation, __ATOMIC_ACQUIRE);

    if (gen != worker_cache_gen && worker_cache) {
        ngx_memzero(worker_cache,
                    sizeof(cache_slot_t) * NGX_HTTP_VTS_CACHE_SLOTS);
        worker_cache_gen = gen;
    }
}


/* the node to count into (nullptr: dropped); cuts keys to NAME_MAX */
ngx_http_vts_node_t *
ngx_http_vts_store_get(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, ngx_array_t *buckets, uint8_t cap_class)
{
    if (name->len > NGX_HTTP_VTS_NAME_MAX) {
        name->len = NGX_HTTP_VTS_NAME_MAX;
    }
    if (group->len > NGX_HTTP_VTS_NAME_MAX) {
        group->len = NGX_HTTP_VTS_NAME_MAX;
    }

    uint32_t hash = ngx_http_vts_key_hash(kind, group, name);
    cache_slot_t *slot = nullptr;

    if (worker_cache) {
        slot = &worker_cache[hash & (NGX_HTTP_VTS_CACHE_SLOTS - 1)];
        if (slot->node && slot->hash == hash
            && node_matches(slot->node, kind, group, name))
        {
            return slot->node;
        }
    }

    ngx_shmtx_lock(&store->shpool->mutex);
    ngx_http_vts_node_t *n = get_locked(store, kind, group, name, hash,
                                        buckets, cap_class);
    ngx_shmtx_unlock(&store->shpool->mutex);

    if (n && slot) {
        slot->node = n;
        slot->hash = hash;
    }
    return n;
}


ngx_http_vts_node_t *
ngx_http_vts_store_find(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name)
{
    ngx_str_t g = *group, nm = *name;

    g.len = ngx_min(g.len, (size_t) NGX_HTTP_VTS_NAME_MAX);
    nm.len = ngx_min(nm.len, (size_t) NGX_HTTP_VTS_NAME_MAX);
    uint32_t hash = ngx_http_vts_key_hash(kind, &g, &nm);
    /* a preaccess check or a variable may come before this request's log
       phase: forget unlinked nodes first, as the counting does */
    ngx_http_vts_store_sync_worker(store);
    if (worker_cache) {
        cache_slot_t *slot =
            &worker_cache[hash & (NGX_HTTP_VTS_CACHE_SLOTS - 1)];
        if (slot->node && slot->hash == hash
            && node_matches(slot->node, kind, &g, &nm))
        {
            return slot->node;
        }
    }
    ngx_shmtx_lock(&store->shpool->mutex);
    ngx_http_vts_node_t *n =
        ngx_http_vts_lookup_locked(store->sh, kind, &g, &nm, hash);
    ngx_shmtx_unlock(&store->shpool->mutex);
    return n;
}


/* the cap a new filter entry of this group counts against: the first
   matching prefix, else the prefix-less cap, else none */
uint8_t
ngx_http_vts_store_filter_class(ngx_http_vts_store_t *store, ngx_str_t *group)
{
    if (store->filter_caps == nullptr) {
        return NGX_HTTP_VTS_CAP_GROUP;
    }
    ngx_http_vts_cap_t *c = (ngx_http_vts_cap_t *) store->filter_caps->elts;
    ngx_int_t any = -1;

    for (ngx_uint_t i = 0; i < store->filter_caps->nelts; i++) {
        if (c[i].prefix.len == 0) {
            if (any < 0) {
                any = (ngx_int_t) i;
            }
            continue;
        }
        if (group->len >= c[i].prefix.len
            && ngx_strncmp(group->data, c[i].prefix.data, c[i].prefix.len) == 0)
        {
            return (uint8_t) (NGX_HTTP_VTS_CAP_FILTER + i);
        }
    }
    return any >= 0 ? (uint8_t) (NGX_HTTP_VTS_CAP_FILTER + any)
                    : (uint8_t) NGX_HTTP_VTS_CAP_GROUP;
}


ngx_http_vts_stats_t *
ngx_http_vts_store_overflow(ngx_http_vts_store_t *store)
{
    return &store->sh->overflow;
}

