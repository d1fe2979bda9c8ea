/*
 * traffic-status: VTS-compatible traffic statistics for nginx (C++17).
 *
 * Shared declarations of the counting core (ngx_http_vts_module.cpp) and
 * the renderers (ngx_http_vts_display.cpp).
 */
#ifndef NGX_HTTP_VTS_H
#define NGX_HTTP_VTS_H

#include "ngx_cpp.h"

#include <cstdint>

#define NGX_HTTP_VTS_MODULE_VERSION   "v0.2.2-np"
#define NGX_HTTP_VTS_BUCKET_MAX       32
#define NGX_HTTP_VTS_AVG_SAMPLES      64
#define NGX_HTTP_VTS_DUMP_MAGIC       0x3153545650474e4eULL  /* "NNGPVTS1" */

/* node types (first byte of a key) */
enum ngx_http_vts_type_e : uint8_t {
    NGX_HTTP_VTS_SERVER = 'S',
    NGX_HTTP_VTS_FILTER = 'F',
    NGX_HTTP_VTS_UPSTREAM = 'U',   /* group = upstream name or ::nogroups */
    NGX_HTTP_VTS_CACHE = 'C'
};

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

/* A zone entry.  The key (group + name) follows the struct. */
struct ngx_http_vts_node_t {
    ngx_rbtree_node_t     rb;           /* key: hash of type/group/name */
    ngx_queue_t           queue;        /* all live nodes, creation order */
    ngx_http_vts_node_t  *free_next;    /* graveyard list */
    ngx_msec_t            freed_at;
    uint8_t               type;
    uint8_t               deleted;
    uint8_t               limit;        /* 0, 1: Host cap, 2+i: limits[i] */
    uint8_t               pad;
    uint16_t              group_len;
    uint16_t              pad2;
    uint32_t              name_len;
    ngx_http_vts_stats_t  stats;
    u_char                data[1];      /* group bytes, then name bytes */
};

struct ngx_http_vts_limit_t {
    ngx_str_t   prefix;                 /* empty: every filter entry */
    ngx_uint_t  max;
    ngx_uint_t  index;                  /* into shctx counts */
};

#define NGX_HTTP_VTS_LIMITS_MAX  16

/* The shared part: lives at the start of the zone, after the slab pool. */
struct ngx_http_vts_shctx_t {
    ngx_rbtree_t          rbtree;
    ngx_rbtree_node_t     sentinel;
    ngx_queue_t           queue;
    ngx_http_vts_node_t  *graveyard;
    uint64_t              generation;   /* bumped when a node is unlinked */
    uint64_t              nodes;
    uint64_t              host_nodes;   /* server zones keyed by Host */
    uint64_t              filter_nodes[NGX_HTTP_VTS_LIMITS_MAX + 1];
    uint64_t              dropped_full;
    uint64_t              dropped_limit;
    uint64_t              start_msec;
    ngx_http_vts_stats_t  overflow;     /* requests whose server entry
                                           could not be stored: in the sum */
};

struct ngx_http_vts_filter_t {
    ngx_http_complex_value_t  key;
    ngx_http_complex_value_t  name;
};

struct ngx_http_vts_set_t {
    ngx_int_t                 index;    /* variable index */
    uint8_t                   type;
    ngx_http_complex_value_t  zone;     /* "GROUP@NAME" or NAME */
    ngx_uint_t                field;
};

struct ngx_http_vts_main_conf_t {
    ngx_shm_zone_t       *shm_zone;
    ngx_str_t             zone_name;
    ngx_http_vts_shctx_t *sh;
    ngx_slab_pool_t      *shpool;

    ngx_array_t          *limits;       /* ngx_http_vts_limit_t */
    ngx_uint_t            host_max;     /* cap of Host-keyed server zones */

    ngx_str_t             dump_path;
    ngx_msec_t            dump_period;

    ngx_flag_t            enable;       /* a zone is configured */
    ngx_array_t          *upstreams;    /* snapshot of umcf->upstreams */
};

struct ngx_http_vts_loc_conf_t {
    ngx_flag_t            enable;
    ngx_flag_t            display;
    ngx_uint_t            format;
    ngx_str_t             jsonp;
    ngx_str_t             sum_key;
    ngx_flag_t            filter;
    ngx_flag_t            filter_by_host;
    ngx_flag_t            filter_check_duplicate;
    ngx_array_t          *filters;      /* ngx_http_vts_filter_t */
    ngx_array_t          *buckets;      /* uint64_t msec, ascending */
    ngx_uint_t            average_method;
    ngx_msec_t            average_period;
    ngx_flag_t            bypass_stats;
    ngx_array_t          *sets;         /* ngx_http_vts_set_t */
};

enum {
    NGX_HTTP_VTS_FORMAT_NONE = 0,
    NGX_HTTP_VTS_FORMAT_JSON,
    NGX_HTTP_VTS_FORMAT_HTML,
    NGX_HTTP_VTS_FORMAT_JSONP,
    NGX_HTTP_VTS_FORMAT_PROMETHEUS
};

extern "C" {
extern ngx_module_t  ngx_http_vts_module;
}

/* core (ngx_http_vts_module.cpp) */
size_t ngx_http_vts_node_size(size_t group_len, size_t name_len);
ngx_http_vts_node_t *ngx_http_vts_lookup_locked(ngx_http_vts_shctx_t *sh,
    uint8_t type, ngx_str_t *group, ngx_str_t *name, uint32_t hash);
uint32_t ngx_http_vts_hash(uint8_t type, ngx_str_t *group, ngx_str_t *name);
void ngx_http_vts_unlink_locked(ngx_http_vts_main_conf_t *vmcf,
    ngx_http_vts_node_t *node);
ngx_http_vts_node_t *ngx_http_vts_create_locked(ngx_http_vts_main_conf_t *vmcf,
    uint8_t type, ngx_str_t *group, ngx_str_t *name, uint32_t hash,
    ngx_array_t *buckets);
uint64_t ngx_http_vts_average(ngx_http_vts_sample_t *samples, uint64_t pos,
    ngx_uint_t method, ngx_msec_t period, uint64_t now);
void ngx_http_vts_stats_reset(ngx_http_vts_stats_t *st);
ngx_int_t ngx_http_vts_dump_save(ngx_http_vts_main_conf_t *vmcf,
    ngx_log_t *log);
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
ngx_http_vts_store(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
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

/* display (ngx_http_vts_display.cpp) */
ngx_int_t ngx_http_vts_display_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_vts_set_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

#endif /* NGX_HTTP_VTS_H */
