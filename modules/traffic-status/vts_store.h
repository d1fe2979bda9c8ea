/*
 * traffic-status: the store, the one owner of the shared zone.
 *
 * Only vts_store.cpp, vts_store_read.cpp and vts_store_peers.cpp touch
 * the zone's rbtree, queue, mutex, slab pool and graveyard.  Every other
 * file asks them: a node to count into (vts_count), a sorted snapshot of
 * node pointers to render (the views), reset or delete of matching nodes
 * (vts_control), one entry's counters (vts_vars), a snapshot to save and
 * a restore (vts_dump), the upstream peers' lifecycle (vts_peers).
 */
#ifndef VTS_STORE_H
#define VTS_STORE_H

#include "ngx_cpp.h"

#include <cstdint>

#define NGX_HTTP_VTS_MODULE_VERSION   "v0.2.7-np"
#define NGX_HTTP_VTS_BUCKET_MAX       32
#define NGX_HTTP_VTS_AVG_SAMPLES      64
#define NGX_HTTP_VTS_NAME_MAX         1024      /* longer keys are cut */
#define NGX_HTTP_VTS_CAPS_MAX         16        /* filter_max_node prefixes */

/* node kinds: the byte is part of the key, of the sort order and of dumps */
enum ngx_http_vts_kind_e : uint8_t {
    NGX_HTTP_VTS_SERVER = 'S',
    NGX_HTTP_VTS_FILTER = 'F',
    NGX_HTTP_VTS_UPSTREAM = 'U',   /* group: upstream name or ::nogroups */
    NGX_HTTP_VTS_CACHE = 'C'
};

/*
 * What a node counts against when it is created: nothing, the cap of
 * Host-keyed server zones, or the i-th filter_max_node cap
 * (NGX_HTTP_VTS_CAP_FILTER + i).
 */
enum ngx_http_vts_cap_class_e : uint8_t {
    NGX_HTTP_VTS_CAP_NONE = 0,
    NGX_HTTP_VTS_CAP_HOST = 1,
    NGX_HTTP_VTS_CAP_GROUP = 2,         /* the default cap of each group */
    NGX_HTTP_VTS_CAP_FILTER = 3
};

/* filter entries per filter group when no filter_max_node names the
   group; per-group counts live in a small table of the zone */
#define NGX_HTTP_VTS_GROUP_MAX_DEFAULT  1024
#define NGX_HTTP_VTS_GROUP_SLOTS        1024

enum {
    NGX_HTTP_VTS_AVG_AMM = 0,
    NGX_HTTP_VTS_AVG_WMA = 1
};

enum {
    NGX_HTTP_VTS_CACHE_MISS = 0,
    NGX_HTTP_VTS_CACHE_BYPASS,
    NGX_HTTP_VTS_CACHE_EXPIRED,
    NGX_HTTP_VTS_CACHE_STALE,
    NGX_HTTP_VTS_CACHE_UPDATING,
    NGX_HTTP_VTS_CACHE_REVALIDATED,
    NGX_HTTP_VTS_CACHE_HIT,
    NGX_HTTP_VTS_CACHE_SCARCE,
    NGX_HTTP_VTS_CACHE_N
};

extern const char *ngx_http_vts_cache_names[NGX_HTTP_VTS_CACHE_N];
extern const char *ngx_http_vts_class_names[5];      /* "1xx" .. "5xx" */

/* one (time, msec) sample of the moving average ring */
struct ngx_http_vts_sample_t {
    uint64_t  time;     /* msec since epoch when the request ended */
    uint64_t  msec;     /* its duration */
};

/*
 * The counters of one zone entry.  Plain old data (it is dumped to disk
 * as is); every field is updated with relaxed atomic operations, so the
 * request path never takes the zone's mutex for an existing entry.
 */
struct ngx_http_vts_stats_t {
    uint64_t  requests;
    uint64_t  in_bytes;
    uint64_t  out_bytes;
    uint64_t  responses[5];             /* 1xx .. 5xx */
    uint64_t  cache[NGX_HTTP_VTS_CACHE_N];
    uint64_t  request_msec_total;
    uint64_t  response_msec_total;      /* upstream only */

    uint64_t  req_pos;                  /* ring positions (monotonic) */
    uint64_t  resp_pos;
    ngx_http_vts_sample_t  req_samples[NGX_HTTP_VTS_AVG_SAMPLES];
    ngx_http_vts_sample_t  resp_samples[NGX_HTTP_VTS_AVG_SAMPLES];

    uint32_t  nbuckets;                 /* set when the node is created */
    uint32_t  pad;
    uint64_t  bucket_msec[NGX_HTTP_VTS_BUCKET_MAX];
    uint64_t  req_buckets[NGX_HTTP_VTS_BUCKET_MAX];    /* non-cumulative */
    uint64_t  resp_buckets[NGX_HTTP_VTS_BUCKET_MAX];
    uint64_t  req_overflow;             /* above the last bucket */
    uint64_t  resp_overflow;
};

/*
 * A zone entry.  The key (group + name) follows the struct.  The first
 * four members are the store's; the views read the others.
 */
struct ngx_http_vts_node_t {
    ngx_rbtree_node_t     rb;           /* key: hash of kind/group/name */
    ngx_queue_t           queue;        /* all live nodes, creation order */
    ngx_http_vts_node_t  *free_next;    /* graveyard list */
    ngx_msec_t            freed_at;
    uint8_t               kind;         /* ngx_http_vts_kind_e */
    uint8_t               deleted;
    uint8_t               cap_class;    /* ngx_http_vts_cap_class_e */
    uint8_t               pad;
    uint16_t              group_len;
    uint16_t              ncodes;       /* exact status code counters */
    uint32_t              name_len;
    uint64_t              last_msec;    /* last request (or creation) */
    uint64_t              peer_added;   /* upstream{} peers: when it joined
                                           its list at run time (0: listed
                                           before worker 0's first look) */
    uint64_t              peer_removed; /* when it left its list, 0 while
                                           listed (the peer lifecycle) */
    ngx_http_vts_stats_t  stats;
    u_char                data[1];      /* group bytes, name bytes, then
                                           ncodes uint64_t (aligned) */
};

/* measure_status_codes: code -> counter slot (0: "other") */
#define NGX_HTTP_VTS_CODE_MIN  100
#define NGX_HTTP_VTS_CODE_MAX  599
struct ngx_http_vts_codes_t {
    bool       all;                     /* every code, shown when seen */
    uint16_t   n;                       /* slots, "other" included */
    uint16_t   slot[NGX_HTTP_VTS_CODE_MAX + 1];
    uint16_t   code[NGX_HTTP_VTS_CODE_MAX - NGX_HTTP_VTS_CODE_MIN + 2];
};

/* a filter_max_node cap: at most max filter entries whose group starts
   with prefix (empty: every filter group) */
struct ngx_http_vts_cap_t {
    ngx_str_t   prefix;
    ngx_uint_t  max;
};

struct ngx_http_vts_shctx_t;        /* the zone's header, store-private */

struct ngx_http_vts_store_t {
    ngx_shm_zone_t        *shm_zone;
    ngx_http_vts_shctx_t  *sh;
    ngx_slab_pool_t       *shpool;
    ngx_array_t           *filter_caps;  /* ngx_http_vts_cap_t */
    ngx_uint_t             host_max;     /* cap of Host-keyed server zones */
    ngx_uint_t             group_max;    /* default cap of a filter group */
    ngx_http_vts_codes_t  *codes;        /* measure_status_codes, or null */
    ngx_msec_t             retain_msec;  /* removed peers: idle expiry */
    ngx_uint_t             retain_max;   /* removed peers kept per upstream
                                            (0: none) */

    /* called once when a new zone is created (dump restore) */
    void                 (*on_create)(ngx_http_vts_store_t *store,
                                      void *data, ngx_log_t *log);
    void                  *on_create_data;
};

/*
 * A control group or a set_by_filter GROUP: a node kind, for upstreams
 * also which groups (::nogroups only, or every other group), and whether
 * a zone names "GROUP@NAME".  kind 0: every kind ("*").
 */
enum ngx_http_vts_upstreams_e : uint8_t {
    NGX_HTTP_VTS_UPSTREAMS_ANY = 0,
    NGX_HTTP_VTS_UPSTREAMS_ALONE,       /* upstream@alone: ::nogroups */
    NGX_HTTP_VTS_UPSTREAMS_GROUPS       /* upstream@group: upstream{} */
};

struct ngx_http_vts_scope_t {
    ngx_str_t   name;
    uint8_t     kind;
    uint8_t     upstreams;              /* ngx_http_vts_upstreams_e */
    bool        grouped;                /* zone is GROUP[@NAME] */
};

extern const ngx_str_t  ngx_http_vts_nogroups;

const ngx_http_vts_scope_t *ngx_http_vts_scope_find(ngx_str_t *name);
bool ngx_http_vts_scope_has(const ngx_http_vts_scope_t *scope,
    ngx_http_vts_node_t *n);
bool ngx_http_vts_is_nogroups(ngx_str_t group);

/* the zone: declared by vts_conf, created here */
ngx_int_t ngx_http_vts_store_init_zone(ngx_shm_zone_t *shm_zone, void *data);
ngx_int_t ngx_http_vts_store_init_worker(ngx_http_vts_store_t *store,
    ngx_cycle_t *cycle);

/* the request path (vts_count) */
void ngx_http_vts_store_sync_worker(ngx_http_vts_store_t *store);
ngx_http_vts_node_t *ngx_http_vts_store_get(ngx_http_vts_store_t *store,
    uint8_t kind, ngx_str_t *group, ngx_str_t *name, ngx_array_t *buckets,
    uint8_t cap_class);
uint8_t ngx_http_vts_store_filter_class(ngx_http_vts_store_t *store,
    ngx_str_t *group);
ngx_http_vts_stats_t *ngx_http_vts_store_overflow(ngx_http_vts_store_t *store);
/* an existing node (worker cache, else the rbtree), never created; for
   the limits and the $vts_* variables */
ngx_http_vts_node_t *ngx_http_vts_store_find(ngx_http_vts_store_t *store,
    uint8_t kind, ngx_str_t *group, ngx_str_t *name);

/* one entry's counters (vts_vars); false when there is none */
bool ngx_http_vts_store_read(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, ngx_http_vts_stats_t *st);

/* reset or delete every node for which match(node, data) says so */
enum ngx_http_vts_op_e { NGX_HTTP_VTS_RESET, NGX_HTTP_VTS_DELETE };
typedef bool (*ngx_http_vts_match_pt)(ngx_http_vts_node_t *n, void *data);
ngx_uint_t ngx_http_vts_store_apply(ngx_http_vts_store_t *store,
    ngx_http_vts_op_e op, ngx_http_vts_match_pt match, void *data);

/* dump restore: runs in on_create, before any worker exists.  The caps
   hold for restored entries (NGX_DECLINED: over its cap, counted as a
   max_node drop), and a restore leaves a quarter of the zone's pages free
   for new keys (NGX_ABORT: stop) */
#define NGX_HTTP_VTS_RESTORE_RESERVE  4     /* keep 1/4 of the pages free */
/* client-keyed entries (Host-keyed server zones, filter entries) leave
   1/8 of the pages free for server_name zones, upstream peers, caches */
#define NGX_HTTP_VTS_CLIENT_RESERVE   8
ngx_int_t ngx_http_vts_store_restore(ngx_http_vts_store_t *store,
    uint8_t kind, ngx_str_t *group, ngx_str_t *name,
    const ngx_http_vts_stats_t *st, uint8_t cap_class);
void ngx_http_vts_store_set_start(ngx_http_vts_store_t *store,
    uint64_t start_msec);

/* a binary upgrade: the entries of the old master's final dump added into
   a live zone (under the mutex, atomic adds; the caps and the reserve hold
   as for a restore), and the pid of the old master whose dump is awaited
   (0: none) */
ngx_int_t ngx_http_vts_store_merge(ngx_http_vts_store_t *store, uint8_t kind,
    ngx_str_t *group, ngx_str_t *name, const ngx_http_vts_stats_t *st,
    uint8_t cap_class);
uint64_t ngx_http_vts_store_upgrade_from(ngx_http_vts_store_t *store);
void ngx_http_vts_store_set_upgrade_from(ngx_http_vts_store_t *store,
    uint64_t pid);

/*
 * The node pointers and zone figures at one moment, taken under the
 * mutex; the nodes are read without it afterwards (an unlinked node
 * stays readable for a grace period, counted from its unlink).  Sorted by
 * kind, group, name, or in creation order.  A reader that may hold it
 * longer than the grace period compares generation with the store's: no
 * node of the snapshot can have been unlinked (so freed) while they are
 * equal.
 */
struct ngx_http_vts_snapshot_t {
    ngx_http_vts_node_t  **nodes;
    ngx_uint_t             n;
    uint64_t               generation;  /* the store's, when taken */
    ngx_msec_t             taken;       /* ngx_current_msec, when taken */
    uint64_t               used_node;
    uint64_t               dropped_full;
    uint64_t               dropped_limit;
    uint64_t               dropped_evicted;
    uint64_t               start_msec;
    size_t                 max_size;
    size_t                 used_size;   /* bytes held by nodes */
    size_t                 free_size;   /* bytes the allocator can give */
    ngx_str_t              zone_name;
    ngx_http_vts_stats_t  *overflow;    /* requests no server node took */
};

ngx_int_t ngx_http_vts_store_snapshot(ngx_http_vts_store_t *store,
    ngx_pool_t *pool, ngx_http_vts_snapshot_t *snap, bool sorted);
void ngx_http_vts_snapshot_range(ngx_http_vts_snapshot_t *snap, uint8_t kind,
    ngx_uint_t *first, ngx_uint_t *last);
ngx_http_vts_node_t *ngx_http_vts_snapshot_find(ngx_http_vts_snapshot_t *snap,
    uint8_t kind, ngx_str_t group, ngx_str_t name);
/* [first, last) of the nodes of kind and group in a sorted snapshot */
void ngx_http_vts_snapshot_group(ngx_http_vts_snapshot_t *snap, uint8_t kind,
    ngx_str_t group, ngx_uint_t *first, ngx_uint_t *last);

/* bumped whenever a node is unlinked (its memory is freed after a grace
   period): a reader holding a snapshot longer than that checks it */
uint64_t ngx_http_vts_store_generation(ngx_http_vts_store_t *store);

/*
 * The peer lifecycle of upstream{} entries (vts_store_peers.cpp).
 *
 * A peer's entry is listed while its upstream's peer list holds the peer.
 * When the peer leaves the list (DNS stopped answering its address, or a
 * reload removed its server line or its upstream) the entry is removed:
 * kept with its counters and shown as removed until it has been idle for
 * retain_msec (no request since it left), or until retain_max newer
 * removed peers of its upstream push it out (the one that would expire
 * first goes first).  So addresses that DNS keeps replacing never fill the
 * zone.  A removed peer that comes back is listed again with its counts.
 *
 * Worker 0 sweeps once a second with every upstream's listed peers: it
 * stamps peer_added and peer_removed, unlinks the removed entries that
 * expired or are over the cap, and creates the entries of peers that
 * joined since its last sweep (a new peer is shown as new before its first
 * request) and of configured peers that have none yet (the zone's last
 * eighth is kept for them: they always have room).  The views keep removed peers by ngx_http_vts_store_retained,
 * the sweep's own rule, so no view shows what the sweep would unlink.
 */
struct ngx_http_vts_listed_t {
    ngx_str_t    group;             /* the upstream's name */
    ngx_str_t   *names;             /* its listed peers: sorted, distinct */
    uint8_t     *flags;             /* per name: NGX_HTTP_VTS_PEER_* */
    ngx_uint_t   n;
};

#define NGX_HTTP_VTS_PEER_JOINED      1   /* not listed at the last sweep */
#define NGX_HTTP_VTS_PEER_HAS_NODE    2   /* (set by the sweep) */
#define NGX_HTTP_VTS_PEER_CONFIGURED  4   /* a server line's own address */

/* listed[]: one per upstream{}, sorted by group; create: make the entries
   of configured and joined peers (with these histogram buckets); pool: for the sweep's
   own temporary arrays */
void ngx_http_vts_store_sweep_peers(ngx_http_vts_store_t *store,
    ngx_http_vts_listed_t *listed, ngx_uint_t n, bool create,
    ngx_array_t *buckets, ngx_pool_t *pool);

/* a removed peer's node and when it retires: its removal or its last
   request, whichever is later (read once, as workers keep counting) */
struct ngx_http_vts_retired_t {
    ngx_http_vts_node_t  *node;
    uint64_t              at;
};

/* of n removed peers of one upstream (node set), the ones kept, newest
   first, in r[0, kept) (returned), then those over the cap (*capped of
   them), then the expired ones.  A node not yet stamped removed counts as
   removed now */
ngx_uint_t ngx_http_vts_store_retained(ngx_http_vts_store_t *store,
    ngx_http_vts_retired_t *r, ngx_uint_t n, uint64_t now,
    ngx_uint_t *capped);

/* a consistent-enough copy of a node's counters */
void ngx_http_vts_read_stats(ngx_http_vts_stats_t *dst,
    const ngx_http_vts_stats_t *src);
uint64_t ngx_http_vts_average(const ngx_http_vts_sample_t *samples,
    uint64_t pos, ngx_uint_t method, ngx_msec_t period, uint64_t now);
uint64_t ngx_http_vts_now_msec();


static inline uint64_t
ngx_http_vts_load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}


static inline void
ngx_http_vts_add(uint64_t *p, uint64_t v)
{
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}


static inline void
ngx_http_vts_set_u64(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}


static inline bool
ngx_http_vts_store_ready(ngx_http_vts_store_t *store)
{
    return store->sh != nullptr;
}


static inline ngx_str_t
ngx_http_vts_node_group(ngx_http_vts_node_t *n)
{
    ngx_str_t s = { n->group_len, n->data };
    return s;
}


static inline ngx_str_t
ngx_http_vts_node_name(ngx_http_vts_node_t *n)
{
    ngx_str_t s = { n->name_len, n->data + n->group_len };
    return s;
}


/* the exact status code counters after the key (ncodes of them) */
static inline uint64_t *
ngx_http_vts_node_codes(ngx_http_vts_node_t *n)
{
    return (uint64_t *) ngx_align_ptr(n->data + n->group_len + n->name_len,
                                      sizeof(uint64_t));
}


static inline void
ngx_http_vts_touch(ngx_http_vts_node_t *n, uint64_t now)
{
    if (ngx_http_vts_load(&n->last_msec) != now) {
        ngx_http_vts_set_u64(&n->last_msec, now);
    }
}


static inline bool
ngx_http_vts_str_eq(ngx_str_t a, const ngx_str_t *b)
{
    return a.len == b->len && ngx_memcmp(a.data, b->data, a.len) == 0;
}

#endif /* VTS_STORE_H */
