/*
 * traffic-status: VTS-compatible traffic statistics for nginx (C++17).
 *
 * This file: directives, the shared zone, counting in the log phase, the
 * per-worker node cache, dump/restore.  Rendering lives in
 * ngx_http_vts_display.cpp.
 *
 * Request path design: every zone entry ("node") lives in the shared zone
 * and holds its counters as 64-bit words updated with relaxed atomics.
 * Each worker keeps a direct-mapped cache (hash of the key -> node
 * pointer), so the zone's mutex is taken only to create a node.  Nodes
 * that are deleted through the control endpoint are unlinked at once but
 * freed only after a grace period, and unlinking bumps a generation
 * counter that makes every worker flush its cache first.
 */

#include "ngx_http_vts.h"

#include <cstring>

#define NGX_HTTP_VTS_CACHE_SLOTS     4096
#define NGX_HTTP_VTS_GRACE_MSEC      10000
#define NGX_HTTP_VTS_NAME_MAX        1024
#define NGX_HTTP_VTS_HOST_MAX_DEFAULT  1024

const char *ngx_http_vts_cache_names[NGX_HTTP_VTS_CACHE_N] = {
    "miss", "bypass", "expired", "stale", "updating", "revalidated", "hit",
    "scarce"
};

namespace {

struct cache_slot_t {
    ngx_http_vts_node_t  *node;
    uint32_t              hash;
};

cache_slot_t  *worker_cache;
uint64_t       worker_cache_gen;
ngx_event_t    dump_event;

ngx_str_t  nogroups = ngx_string("::nogroups");
ngx_str_t  empty_group = ngx_null_string;

/* ----------------------------------------------------------------------
 * configuration
 */

void *create_main_conf(ngx_conf_t *cf);
char *init_main_conf(ngx_conf_t *cf, void *conf);
void *create_loc_conf(ngx_conf_t *cf);
char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
ngx_int_t postconfiguration(ngx_conf_t *cf);
ngx_int_t init_process(ngx_cycle_t *cycle);
void exit_process(ngx_cycle_t *cycle);
void exit_master(ngx_cycle_t *cycle);

char *set_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_display(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_filter_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_max_node(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_buckets(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_average(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_by_filter(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_dump(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_unsupported(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

#define VTS_ANY_CONF  (NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF)
#define VTS_IF_CONF   (NGX_HTTP_SIF_CONF|NGX_HTTP_LIF_CONF)

ngx_command_t commands[] = {

    { ngx_string("vhost_traffic_status_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      set_zone, 0, 0, NULL },

    { ngx_string("vhost_traffic_status"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, enable), NULL },

    { ngx_string("vhost_traffic_status_display"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      set_display, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },

    { ngx_string("vhost_traffic_status_display_format"),
      VTS_ANY_CONF|NGX_CONF_TAKE1,
      set_format, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },

    { ngx_string("vhost_traffic_status_display_jsonp"),
      VTS_ANY_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, jsonp), NULL },

    { ngx_string("vhost_traffic_status_display_sum_key"),
      VTS_ANY_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, sum_key), NULL },

    { ngx_string("vhost_traffic_status_filter"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, filter), NULL },

    { ngx_string("vhost_traffic_status_filter_by_host"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, filter_by_host), NULL },

    { ngx_string("vhost_traffic_status_filter_by_set_key"),
      VTS_ANY_CONF|NGX_CONF_TAKE12,
      set_filter_key, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },

    { ngx_string("vhost_traffic_status_filter_check_duplicate"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, filter_check_duplicate), NULL },

    { ngx_string("vhost_traffic_status_filter_max_node"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      set_max_node, 0, 0, NULL },

    { ngx_string("vhost_traffic_status_histogram_buckets"),
      VTS_ANY_CONF|NGX_CONF_1MORE,
      set_buckets, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },

    { ngx_string("vhost_traffic_status_average_method"),
      VTS_ANY_CONF|NGX_CONF_TAKE12,
      set_average, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },

    { ngx_string("vhost_traffic_status_bypass_stats"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, bypass_stats), NULL },

    { ngx_string("vhost_traffic_status_set_by_filter"),
      VTS_ANY_CONF|VTS_IF_CONF|NGX_CONF_TAKE2,
      set_by_filter, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },

    { ngx_string("vhost_traffic_status_dump"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      set_dump, 0, 0, NULL },

    /* The limit family of VTS: rejected loudly, never ignored. */
    { ngx_string("vhost_traffic_status_limit"),
      VTS_ANY_CONF|VTS_IF_CONF|NGX_CONF_ANY,
      set_unsupported, 0, 0, NULL },
    { ngx_string("vhost_traffic_status_limit_traffic"),
      VTS_ANY_CONF|VTS_IF_CONF|NGX_CONF_ANY,
      set_unsupported, 0, 0, NULL },
    { ngx_string("vhost_traffic_status_limit_traffic_by_set_key"),
      VTS_ANY_CONF|VTS_IF_CONF|NGX_CONF_ANY,
      set_unsupported, 0, 0, NULL },
    { ngx_string("vhost_traffic_status_limit_check_duplicate"),
      VTS_ANY_CONF|VTS_IF_CONF|NGX_CONF_ANY,
      set_unsupported, 0, 0, NULL },
    { ngx_string("vhost_traffic_status_bypass_limit"),
      VTS_ANY_CONF|VTS_IF_CONF|NGX_CONF_ANY,
      set_unsupported, 0, 0, NULL },

    ngx_null_command
};

ngx_http_module_t module_ctx = {
    NULL,                  /* preconfiguration */
    postconfiguration,     /* postconfiguration */
    create_main_conf,      /* create main configuration */
    init_main_conf,        /* init main configuration */
    NULL,                  /* create server configuration */
    NULL,                  /* merge server configuration */
    create_loc_conf,       /* create location configuration */
    merge_loc_conf         /* merge location configuration */
};

} // namespace

ngx_module_t  ngx_http_vts_module = {
    NGX_MODULE_V1,
    &module_ctx,                   /* module context */
    commands,                      /* module directives */
    NGX_HTTP_MODULE,               /* module type */
    NULL,                          /* init master */
    NULL,                          /* init module */
    init_process,                  /* init process */
    NULL,                          /* init thread */
    NULL,                          /* exit thread */
    exit_process,                  /* exit process */
    exit_master,                   /* exit master */
    NGX_MODULE_V1_PADDING
};


/* ----------------------------------------------------------------------
 * the shared zone
 */

uint64_t
ngx_http_vts_now_msec()
{
    ngx_time_t *tp = ngx_timeofday();
    return (uint64_t) tp->sec * 1000 + tp->msec;
}


uint32_t
ngx_http_vts_hash(uint8_t type, ngx_str_t *group, ngx_str_t *name)
{
    uint32_t  crc;
    u_char    sep = 0;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, &type, 1);
    ngx_crc32_update(&crc, group->data, group->len);
    ngx_crc32_update(&crc, &sep, 1);
    ngx_crc32_update(&crc, name->data, name->len);
    ngx_crc32_final(crc);
    return crc;
}


size_t
ngx_http_vts_node_size(size_t group_len, size_t name_len)
{
    return offsetof(ngx_http_vts_node_t, data) + group_len + name_len;
}


static bool
node_matches(ngx_http_vts_node_t *n, uint8_t type, ngx_str_t *group,
    ngx_str_t *name)
{
    return n->type == type && n->group_len == group->len
           && n->name_len == name->len
           && ngx_memcmp(n->data, group->data, group->len) == 0
           && ngx_memcmp(n->data + group->len, name->data, name->len) == 0;
}


/* total order of keys: hash, type, group, name */
static int
node_cmp(ngx_http_vts_node_t *n, uint32_t hash, uint8_t type,
    ngx_str_t *group, ngx_str_t *name)
{
    if (hash != n->rb.key) {
        return hash < n->rb.key ? -1 : 1;
    }
    if (type != n->type) {
        return type < n->type ? -1 : 1;
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
ngx_http_vts_lookup_locked(ngx_http_vts_shctx_t *sh, uint8_t type,
    ngx_str_t *group, ngx_str_t *name, uint32_t hash)
{
    ngx_rbtree_node_t  *node = sh->rbtree.root;
    ngx_rbtree_node_t  *sentinel = sh->rbtree.sentinel;

    while (node != sentinel) {
        ngx_http_vts_node_t *n = (ngx_http_vts_node_t *) node;
        int rc = node_cmp(n, hash, type, group, name);
        if (rc == 0) {
            return n;
        }
        node = rc < 0 ? node->left : node->right;
    }

    return NULL;
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
                          n->type, &group, &name);
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


static void
graveyard_collect_locked(ngx_http_vts_main_conf_t *vmcf)
{
    ngx_http_vts_node_t  **pp = &vmcf->sh->graveyard;

    while (*pp) {
        ngx_http_vts_node_t *n = *pp;
        if ((ngx_msec_int_t) (ngx_current_msec - n->freed_at)
            >= NGX_HTTP_VTS_GRACE_MSEC)
        {
            *pp = n->free_next;
            ngx_slab_free_locked(vmcf->shpool, n);
            continue;
        }
        pp = &n->free_next;
    }
}


static void
limit_release_locked(ngx_http_vts_shctx_t *sh, uint8_t limit)
{
    if (limit == 1 && sh->host_nodes) {
        sh->host_nodes--;
    } else if (limit >= 2 && sh->filter_nodes[limit - 2]) {
        sh->filter_nodes[limit - 2]--;
    }
}


void
ngx_http_vts_unlink_locked(ngx_http_vts_main_conf_t *vmcf,
    ngx_http_vts_node_t *node)
{
    ngx_http_vts_shctx_t  *sh = vmcf->sh;

    ngx_rbtree_delete(&sh->rbtree, &node->rb);
    ngx_queue_remove(&node->queue);
    node->deleted = 1;
    node->freed_at = ngx_current_msec;
    node->free_next = sh->graveyard;
    sh->graveyard = node;
    sh->nodes--;
    limit_release_locked(sh, node->limit);
    __atomic_fetch_add(&sh->generation, 1, __ATOMIC_RELEASE);
}


static void
stats_init_buckets(ngx_http_vts_stats_t *st, ngx_array_t *buckets)
{
    st->nbuckets = 0;
    if (buckets == NULL) {
        return;
    }
    uint64_t *b = (uint64_t *) buckets->elts;
    for (ngx_uint_t i = 0; i < buckets->nelts; i++) {
        st->bucket_msec[i] = b[i];
    }
    st->nbuckets = (uint32_t) buckets->nelts;
}


ngx_http_vts_node_t *
ngx_http_vts_create_locked(ngx_http_vts_main_conf_t *vmcf, uint8_t type,
    ngx_str_t *group, ngx_str_t *name, uint32_t hash, ngx_array_t *buckets)
{
    ngx_http_vts_shctx_t  *sh = vmcf->sh;

    if (sh->graveyard) {
        graveyard_collect_locked(vmcf);
    }

    size_t size = ngx_http_vts_node_size(group->len, name->len);
    ngx_http_vts_node_t *n =
        (ngx_http_vts_node_t *) ngx_slab_calloc_locked(vmcf->shpool, size);
    if (n == NULL) {
        return NULL;
    }

    n->rb.key = hash;
    n->type = type;
    n->group_len = (uint16_t) group->len;
    n->name_len = (uint32_t) name->len;
    ngx_memcpy(n->data, group->data, group->len);
    ngx_memcpy(n->data + group->len, name->data, name->len);
    stats_init_buckets(&n->stats, buckets);

    ngx_rbtree_insert(&sh->rbtree, &n->rb);
    ngx_queue_insert_tail(&sh->queue, &n->queue);
    sh->nodes++;
    return n;
}


void
ngx_http_vts_stats_reset(ngx_http_vts_stats_t *st)
{
    uint64_t *p = (uint64_t *) st;
    size_t n = offsetof(ngx_http_vts_stats_t, nbuckets) / sizeof(uint64_t);

    for (size_t i = 0; i < n; i++) {
        ngx_http_vts_store(&p[i], 0);
    }
    for (size_t i = 0; i < NGX_HTTP_VTS_BUCKET_MAX; i++) {
        ngx_http_vts_store(&st->req_buckets[i], 0);
        ngx_http_vts_store(&st->resp_buckets[i], 0);
    }
    ngx_http_vts_store(&st->req_overflow, 0);
    ngx_http_vts_store(&st->resp_overflow, 0);
}


uint64_t
ngx_http_vts_average(ngx_http_vts_sample_t *samples, uint64_t pos,
    ngx_uint_t method, ngx_msec_t period, uint64_t now)
{
    uint64_t n = pos < NGX_HTTP_VTS_AVG_SAMPLES ? pos : NGX_HTTP_VTS_AVG_SAMPLES;
    uint64_t sum = 0, weights = 0;

    for (uint64_t k = 0; k < n; k++) {
        /* k = 0 is the newest sample */
        ngx_http_vts_sample_t *s =
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


namespace {

ngx_int_t
init_zone(ngx_shm_zone_t *shm_zone, void *data);


ngx_int_t
dump_restore(ngx_http_vts_main_conf_t *vmcf, ngx_log_t *log)
{
    ngx_fd_t fd = ngx_open_file(vmcf->dump_path.data, NGX_FILE_RDONLY,
                                NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                          "vhost_traffic_status: cannot open dump \"%V\"",
                          &vmcf->dump_path);
        }
        return NGX_OK;
    }

    ngx_file_info_t fi;
    u_char *buf = NULL;
    ssize_t size = 0;

    if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR) {
        size = (ssize_t) ngx_file_size(&fi);
        buf = (u_char *) ngx_alloc(size ? size : 1, log);
    }
    if (buf == NULL || read(fd, buf, size) != size) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                      "vhost_traffic_status: cannot read dump \"%V\"",
                      &vmcf->dump_path);
        ngx_close_file(fd);
        if (buf) {
            ngx_free(buf);
        }
        return NGX_OK;
    }
    ngx_close_file(fd);

    /* header: magic, sizeof(stats), start_msec */
    u_char *p = buf, *end = buf + size;
    uint64_t hdr[3];
    ngx_uint_t restored = 0;

    if (size < (ssize_t) sizeof(hdr)) {
        goto bad;
    }
    ngx_memcpy(hdr, p, sizeof(hdr));
    p += sizeof(hdr);
    if (hdr[0] != NGX_HTTP_VTS_DUMP_MAGIC
        || hdr[1] != sizeof(ngx_http_vts_stats_t))
    {
        goto bad;
    }

    vmcf->sh->start_msec = hdr[2];

    while (p < end) {
        uint32_t rec[3];   /* type, group_len, name_len */
        ngx_http_vts_stats_t st;

        if ((size_t) (end - p) < sizeof(rec) + sizeof(st)) {
            goto bad;
        }
        ngx_memcpy(rec, p, sizeof(rec));
        p += sizeof(rec);
        ngx_memcpy(&st, p, sizeof(st));
        p += sizeof(st);
        if (rec[1] > 65535 || rec[2] > NGX_HTTP_VTS_NAME_MAX
            || (size_t) (end - p) < (size_t) rec[1] + rec[2]
            || st.nbuckets > NGX_HTTP_VTS_BUCKET_MAX)
        {
            goto bad;
        }
        ngx_str_t group = { rec[1], p };
        ngx_str_t name = { rec[2], p + rec[1] };
        p += rec[1] + rec[2];

        uint8_t type = (uint8_t) rec[0];
        uint32_t hash = ngx_http_vts_hash(type, &group, &name);
        ngx_http_vts_node_t *n =
            ngx_http_vts_lookup_locked(vmcf->sh, type, &group, &name, hash);
        if (n == NULL) {
            n = ngx_http_vts_create_locked(vmcf, type, &group, &name, hash,
                                           NULL);
        }
        if (n == NULL) {
            break;
        }
        n->stats = st;
        restored++;
    }

    ngx_free(buf);
    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "vhost_traffic_status: restored %ui entries from \"%V\"",
                  restored, &vmcf->dump_path);
    return NGX_OK;

bad:
    ngx_free(buf);
    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "vhost_traffic_status: dump \"%V\" is not valid, ignored",
                  &vmcf->dump_path);
    return NGX_OK;
}


ngx_int_t
init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_vts_main_conf_t *vmcf =
        (ngx_http_vts_main_conf_t *) shm_zone->data;
    ngx_http_vts_main_conf_t *old = (ngx_http_vts_main_conf_t *) data;

    vmcf->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (old) {
        /* reload with the same name and size: keep every counter */
        vmcf->sh = old->sh;
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        vmcf->sh = (ngx_http_vts_shctx_t *) vmcf->shpool->data;
        return NGX_OK;
    }

    ngx_http_vts_shctx_t *sh = (ngx_http_vts_shctx_t *)
        ngx_slab_calloc(vmcf->shpool, sizeof(ngx_http_vts_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }
    vmcf->sh = sh;
    vmcf->shpool->data = sh;
    /* a full zone is expected under attack: count it, don't log it */
    vmcf->shpool->log_nomem = 0;

    ngx_rbtree_init(&sh->rbtree, &sh->sentinel, rbtree_insert);
    ngx_queue_init(&sh->queue);
    sh->start_msec = ngx_http_vts_now_msec();

    size_t len = sizeof(" in vhost_traffic_status zone \"\"") + shm_zone->shm.name.len;
    vmcf->shpool->log_ctx = (u_char *) ngx_slab_alloc(vmcf->shpool, len);
    if (vmcf->shpool->log_ctx) {
        ngx_sprintf(vmcf->shpool->log_ctx, " in vhost_traffic_status zone \"%V\"%Z",
                    &shm_zone->shm.name);
    }

    if (vmcf->dump_path.len) {
        dump_restore(vmcf, shm_zone->shm.log);
    }
    return NGX_OK;
}


void *
create_main_conf(ngx_conf_t *cf)
{
    ngx_http_vts_main_conf_t *conf = (ngx_http_vts_main_conf_t *)
        ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_main_conf_t));
    if (conf == NULL) {
        return NULL;
    }
    conf->host_max = NGX_CONF_UNSET_UINT;
    conf->dump_period = NGX_CONF_UNSET_MSEC;
    conf->enable = 0;
    return conf;
}


char *
init_main_conf(ngx_conf_t *cf, void *c)
{
    ngx_http_vts_main_conf_t *conf = (ngx_http_vts_main_conf_t *) c;

    ngx_conf_init_uint_value(conf->host_max, NGX_HTTP_VTS_HOST_MAX_DEFAULT);
    ngx_conf_init_msec_value(conf->dump_period, 60000);
    return NGX_CONF_OK;
}


void *
create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_vts_loc_conf_t *conf = (ngx_http_vts_loc_conf_t *)
        ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }
    conf->enable = NGX_CONF_UNSET;
    conf->display = NGX_CONF_UNSET;
    conf->format = NGX_CONF_UNSET_UINT;
    conf->filter = NGX_CONF_UNSET;
    conf->filter_by_host = NGX_CONF_UNSET;
    conf->filter_check_duplicate = NGX_CONF_UNSET;
    conf->filters = (ngx_array_t *) NGX_CONF_UNSET_PTR;
    conf->buckets = (ngx_array_t *) NGX_CONF_UNSET_PTR;
    conf->average_method = NGX_CONF_UNSET_UINT;
    conf->average_period = NGX_CONF_UNSET_MSEC;
    conf->bypass_stats = NGX_CONF_UNSET;
    conf->sets = NULL;
    return conf;
}


char *
merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_vts_loc_conf_t *prev = (ngx_http_vts_loc_conf_t *) parent;
    ngx_http_vts_loc_conf_t *conf = (ngx_http_vts_loc_conf_t *) child;

    ngx_conf_merge_value(conf->enable, prev->enable, 1);
    ngx_conf_merge_value(conf->display, prev->display, 0);
    ngx_conf_merge_uint_value(conf->format, prev->format,
                              (ngx_uint_t) NGX_HTTP_VTS_FORMAT_JSON);
    ngx_conf_merge_str_value(conf->jsonp, prev->jsonp,
                             "ngx_http_vhost_traffic_status_jsonp_callback");
    ngx_conf_merge_str_value(conf->sum_key, prev->sum_key, "*");
    ngx_conf_merge_value(conf->filter, prev->filter, 1);
    ngx_conf_merge_value(conf->filter_by_host, prev->filter_by_host, 0);
    ngx_conf_merge_value(conf->filter_check_duplicate,
                         prev->filter_check_duplicate, 1);
    ngx_conf_merge_ptr_value(conf->filters, prev->filters, NULL);
    ngx_conf_merge_ptr_value(conf->buckets, prev->buckets, NULL);
    ngx_conf_merge_uint_value(conf->average_method, prev->average_method,
                              (ngx_uint_t) NGX_HTTP_VTS_AVG_AMM);
    ngx_conf_merge_msec_value(conf->average_period, prev->average_period,
                              60000);
    ngx_conf_merge_value(conf->bypass_stats, prev->bypass_stats, 0);
    if (conf->sets == NULL) {
        conf->sets = prev->sets;
    }
    return NGX_CONF_OK;
}


char *
set_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) conf;
    ngx_str_t name = ngx_string("vhost_traffic_status");
    ssize_t size = 1024 * 1024;

    if (vmcf->shm_zone) {
        return (char *) "is duplicate";
    }

    if (cf->args->nelts == 2) {
        ngx_str_t *value = (ngx_str_t *) cf->args->elts;
        ngx_str_t v = value[1];

        if (v.len <= sizeof("shared:") - 1
            || ngx_strncmp(v.data, "shared:", sizeof("shared:") - 1) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\", expected "
                               "\"shared:NAME:SIZE\"", &v);
            return (char *) NGX_CONF_ERROR;
        }
        name.data = v.data + sizeof("shared:") - 1;
        u_char *colon = (u_char *) ngx_strlchr(name.data, v.data + v.len, ':');
        if (colon == NULL || colon == name.data) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\", expected "
                               "\"shared:NAME:SIZE\"", &v);
            return (char *) NGX_CONF_ERROR;
        }
        name.len = colon - name.data;
        ngx_str_t s = { (size_t) (v.data + v.len - colon - 1), colon + 1 };
        size = ngx_parse_size(&s);
        if (size == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid zone size \"%V\"", &s);
            return (char *) NGX_CONF_ERROR;
        }
        if (size < (ssize_t) (8 * ngx_pagesize)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "zone \"%V\" is too small (at least %uzk)",
                               &name, 8 * ngx_pagesize / 1024);
            return (char *) NGX_CONF_ERROR;
        }
    }

    vmcf->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                           &ngx_http_vts_module);
    if (vmcf->shm_zone == NULL) {
        return (char *) NGX_CONF_ERROR;
    }
    if (vmcf->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &name);
        return (char *) NGX_CONF_ERROR;
    }
    vmcf->shm_zone->init = init_zone;
    vmcf->shm_zone->data = vmcf;
    vmcf->zone_name = name;
    vmcf->enable = 1;
    return NGX_CONF_OK;
}


char *
set_display(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *) conf;
    ngx_http_core_loc_conf_t *clcf = (ngx_http_core_loc_conf_t *)
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (vlcf->display != NGX_CONF_UNSET) {
        return (char *) "is duplicate";
    }
    vlcf->display = 1;
    clcf->handler = ngx_http_vts_display_handler;
    return NGX_CONF_OK;
}


ngx_uint_t
parse_format(ngx_str_t *v)
{
    static const struct { const char *name; ngx_uint_t fmt; } formats[] = {
        { "json", NGX_HTTP_VTS_FORMAT_JSON },
        { "html", NGX_HTTP_VTS_FORMAT_HTML },
        { "jsonp", NGX_HTTP_VTS_FORMAT_JSONP },
        { "prometheus", NGX_HTTP_VTS_FORMAT_PROMETHEUS },
    };
    for (auto &f : formats) {
        if (v->len == ngx_strlen(f.name)
            && ngx_strncasecmp(v->data, (u_char *) f.name, v->len) == 0)
        {
            return f.fmt;
        }
    }
    return NGX_HTTP_VTS_FORMAT_NONE;
}


char *
set_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (vlcf->format != NGX_CONF_UNSET_UINT) {
        return (char *) "is duplicate";
    }
    vlcf->format = parse_format(&value[1]);
    if (vlcf->format == NGX_HTTP_VTS_FORMAT_NONE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid format \"%V\", expected json, html, "
                           "jsonp or prometheus", &value[1]);
        return (char *) NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


char *
set_filter_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (value[1].len == 0) {
        return (char *) "has an empty key";
    }

    if (vlcf->filters == NGX_CONF_UNSET_PTR) {
        vlcf->filters = ngx_array_create(cf->pool, 2,
                                         sizeof(ngx_http_vts_filter_t));
        if (vlcf->filters == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
    }

    ngx_http_vts_filter_t *f =
        (ngx_http_vts_filter_t *) ngx_array_push(vlcf->filters);
    if (f == NULL) {
        return (char *) NGX_CONF_ERROR;
    }
    ngx_memzero(f, sizeof(*f));

    ngx_str_t name = ngx_string("$server_name");
    if (cf->args->nelts == 3) {
        name = value[2];
    }

    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &f->key;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = &name;
    ccv.complex_value = &f->name;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


char *
set_max_node(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    ngx_int_t max = ngx_atoi(value[1].data, value[1].len);
    if (max == NGX_ERROR || max == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number \"%V\", expected a positive "
                           "integer", &value[1]);
        return (char *) NGX_CONF_ERROR;
    }

    if (vmcf->limits == NULL) {
        vmcf->limits = ngx_array_create(cf->pool, 4,
                                        sizeof(ngx_http_vts_limit_t));
        if (vmcf->limits == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
    }

    ngx_uint_t n = cf->args->nelts == 2 ? 1 : cf->args->nelts - 2;
    for (ngx_uint_t i = 0; i < n; i++) {
        if (vmcf->limits->nelts >= NGX_HTTP_VTS_LIMITS_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "too many filter_max_node prefixes (at most %d)",
                               NGX_HTTP_VTS_LIMITS_MAX);
            return (char *) NGX_CONF_ERROR;
        }
        ngx_http_vts_limit_t *l =
            (ngx_http_vts_limit_t *) ngx_array_push(vmcf->limits);
        if (l == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
        l->max = (ngx_uint_t) max;
        l->index = vmcf->limits->nelts - 1;
        if (cf->args->nelts == 2) {
            ngx_str_null(&l->prefix);
            /* without prefixes it also caps the Host-keyed server zones */
            vmcf->host_max = (ngx_uint_t) max;
        } else {
            l->prefix = value[2 + i];
        }
    }
    return NGX_CONF_OK;
}


char *
set_buckets(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (vlcf->buckets != NGX_CONF_UNSET_PTR) {
        return (char *) "is duplicate";
    }
    if (cf->args->nelts - 1 > NGX_HTTP_VTS_BUCKET_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many buckets (at most %d)",
                           NGX_HTTP_VTS_BUCKET_MAX);
        return (char *) NGX_CONF_ERROR;
    }

    vlcf->buckets = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                     sizeof(uint64_t));
    if (vlcf->buckets == NULL) {
        return (char *) NGX_CONF_ERROR;
    }

    uint64_t prev = 0;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        ngx_int_t ms = ngx_atofp(value[i].data, value[i].len, 3);
        if (ms == NGX_ERROR || ms <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid bucket \"%V\", expected seconds "
                               "such as 0.005 (millisecond precision)",
                               &value[i]);
            return (char *) NGX_CONF_ERROR;
        }
        if (i > 1 && (uint64_t) ms <= prev) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "bucket \"%V\" is not greater than the "
                               "previous one (buckets must ascend)",
                               &value[i]);
            return (char *) NGX_CONF_ERROR;
        }
        prev = (uint64_t) ms;
        uint64_t *b = (uint64_t *) ngx_array_push(vlcf->buckets);
        if (b == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
        *b = prev;
    }
    return NGX_CONF_OK;
}


char *
set_average(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (vlcf->average_method != NGX_CONF_UNSET_UINT) {
        return (char *) "is duplicate";
    }
    if (value[1].len == 3 && ngx_strncasecmp(value[1].data, (u_char *) "AMM", 3) == 0) {
        vlcf->average_method = NGX_HTTP_VTS_AVG_AMM;
    } else if (value[1].len == 3
               && ngx_strncasecmp(value[1].data, (u_char *) "WMA", 3) == 0)
    {
        vlcf->average_method = NGX_HTTP_VTS_AVG_WMA;
    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid method \"%V\", expected AMM or WMA",
                           &value[1]);
        return (char *) NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 3) {
        ngx_msec_t period = ngx_parse_time(&value[2], 0);
        if (period == (ngx_msec_t) NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid period \"%V\"", &value[2]);
            return (char *) NGX_CONF_ERROR;
        }
        vlcf->average_period = period;
    }
    return NGX_CONF_OK;
}


/* field names accepted by vhost_traffic_status_set_by_filter */
const char *set_fields[] = {
    "requestCounter", "inBytes", "outBytes",
    "1xx", "2xx", "3xx", "4xx", "5xx",
    "cacheMiss", "cacheBypass", "cacheExpired", "cacheStale",
    "cacheUpdating", "cacheRevalidated", "cacheHit", "cacheScarce",
    "requestMsecCounter", "requestMsec", "responseMsecCounter", "responseMsec",
    nullptr
};



char *
set_by_filter(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;
    ngx_str_t var = value[1];
    ngx_str_t spec = value[2];

    if (var.len < 2 || var.data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid variable name \"%V\"", &var);
        return (char *) NGX_CONF_ERROR;
    }
    var.data++;
    var.len--;

    /* GROUP/ZONE/NAME; ZONE may contain '/', so split on the first and last */
    u_char *first = (u_char *) ngx_strlchr(spec.data, spec.data + spec.len, '/');
    u_char *last = NULL;
    for (u_char *p = spec.data + spec.len; p > spec.data; p--) {
        if (p[-1] == '/') {
            last = p - 1;
            break;
        }
    }
    if (first == NULL || last == first) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid statistic \"%V\", expected "
                           "GROUP/ZONE/NAME", &spec);
        return (char *) NGX_CONF_ERROR;
    }

    ngx_str_t g = { (size_t) (first - spec.data), spec.data };
    ngx_str_t zone = { (size_t) (last - first - 1), first + 1 };
    ngx_str_t field = { (size_t) (spec.data + spec.len - last - 1), last + 1 };

    ngx_http_vts_set_t s;
    ngx_memzero(&s, sizeof(s));

    static const struct { const char *name; uint8_t type; } groups[] = {
        { "server", NGX_HTTP_VTS_SERVER },
        { "filter", NGX_HTTP_VTS_FILTER },
        { "upstream@alone", NGX_HTTP_VTS_UPSTREAM },
        { "upstream@group", NGX_HTTP_VTS_UPSTREAM + 0x80 },
        { "cache", NGX_HTTP_VTS_CACHE },
    };
    for (auto &e : groups) {
        if (g.len == ngx_strlen(e.name)
            && ngx_strncmp(g.data, e.name, g.len) == 0)
        {
            s.type = e.type;
        }
    }
    if (s.type == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid group \"%V\", expected server, filter, "
                           "upstream@alone, upstream@group or cache", &g);
        return (char *) NGX_CONF_ERROR;
    }

    s.field = NGX_CONF_UNSET_UINT;
    for (ngx_uint_t i = 0; set_fields[i]; i++) {
        if (field.len == ngx_strlen(set_fields[i])
            && ngx_strncmp(field.data, set_fields[i], field.len) == 0)
        {
            s.field = i;
        }
    }
    if (s.field == NGX_CONF_UNSET_UINT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown statistic \"%V\"", &field);
        return (char *) NGX_CONF_ERROR;
    }

    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = &zone;
    ccv.complex_value = &s.zone;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    ngx_http_variable_t *v = ngx_http_add_variable(cf, &var,
        NGX_HTTP_VAR_CHANGEABLE|NGX_HTTP_VAR_NOCACHEABLE);
    if (v == NULL) {
        return (char *) NGX_CONF_ERROR;
    }
    v->get_handler = ngx_http_vts_set_variable;
    s.index = ngx_http_get_variable_index(cf, &var);
    if (s.index == NGX_ERROR) {
        return (char *) NGX_CONF_ERROR;
    }
    v->data = (uintptr_t) s.index;

    /* a location's list starts as a copy of what it inherits */
    if (vlcf->sets == NULL) {
        vlcf->sets = ngx_array_create(cf->pool, 2, sizeof(ngx_http_vts_set_t));
        if (vlcf->sets == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
    }
    ngx_http_vts_set_t *p = (ngx_http_vts_set_t *) ngx_array_push(vlcf->sets);
    if (p == NULL) {
        return (char *) NGX_CONF_ERROR;
    }
    *p = s;
    return NGX_CONF_OK;
}


char *
set_dump(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (vmcf->dump_path.data) {
        return (char *) "is duplicate";
    }
    vmcf->dump_path = value[1];
    if (ngx_conf_full_name(cf->cycle, &vmcf->dump_path, 0) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }
    if (cf->args->nelts == 3) {
        ngx_msec_t period = ngx_parse_time(&value[2], 0);
        if (period == (ngx_msec_t) NGX_ERROR || period < 1000) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid period \"%V\" (at least 1s)",
                               &value[2]);
            return (char *) NGX_CONF_ERROR;
        }
        vmcf->dump_period = period;
    }
    return NGX_CONF_OK;
}


char *
set_unsupported(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\" is not supported by this build (the "
                       "traffic-status module implements statistics only, "
                       "not the VTS limit directives)", &cmd->name);
    return (char *) NGX_CONF_ERROR;
}


/* ----------------------------------------------------------------------
 * counting
 */

ngx_http_vts_node_t *
get_node(ngx_http_vts_main_conf_t *vmcf, uint8_t type, ngx_str_t *group,
    ngx_str_t *name, ngx_array_t *buckets, uint8_t limit)
{
    if (name->len > NGX_HTTP_VTS_NAME_MAX) {
        name->len = NGX_HTTP_VTS_NAME_MAX;
    }
    if (group->len > NGX_HTTP_VTS_NAME_MAX) {
        group->len = NGX_HTTP_VTS_NAME_MAX;
    }

    uint32_t hash = ngx_http_vts_hash(type, group, name);
    cache_slot_t *slot = NULL;

    if (worker_cache) {
        slot = &worker_cache[hash & (NGX_HTTP_VTS_CACHE_SLOTS - 1)];
        if (slot->node && slot->hash == hash
            && node_matches(slot->node, type, group, name))
        {
            return slot->node;
        }
    }

    ngx_http_vts_shctx_t *sh = vmcf->sh;
    ngx_shmtx_lock(&vmcf->shpool->mutex);

    ngx_http_vts_node_t *n =
        ngx_http_vts_lookup_locked(sh, type, group, name, hash);

    if (n == NULL) {
        bool allowed = true;
        if (limit == 1 && sh->host_nodes >= vmcf->host_max) {
            allowed = false;
        } else if (limit >= 2) {
            ngx_http_vts_limit_t *l =
                (ngx_http_vts_limit_t *) vmcf->limits->elts;
            if (sh->filter_nodes[limit - 2] >= l[limit - 2].max) {
                allowed = false;
            }
        }

        if (!allowed) {
            sh->dropped_limit++;
        } else {
            n = ngx_http_vts_create_locked(vmcf, type, group, name, hash,
                                           buckets);
            if (n == NULL) {
                sh->dropped_full++;
            } else {
                n->limit = limit;
                if (limit == 1) {
                    sh->host_nodes++;
                } else if (limit >= 2) {
                    sh->filter_nodes[limit - 2]++;
                }
            }
        }
    }

    ngx_shmtx_unlock(&vmcf->shpool->mutex);

    if (n && slot) {
        slot->node = n;
        slot->hash = hash;
    }
    return n;
}


struct sample_t {
    ngx_uint_t  status;
    uint64_t    in;
    uint64_t    out;
    uint64_t    request_msec;
    int64_t     response_msec;    /* < 0: none */
    ngx_int_t   cache;            /* < 0: none */
    uint64_t    now;
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
    ngx_http_vts_sample_t *smp = &st->req_samples[pos % NGX_HTTP_VTS_AVG_SAMPLES];
    ngx_http_vts_store(&smp->msec, s->request_msec);
    ngx_http_vts_store(&smp->time, s->now);
    count_buckets(st, st->req_buckets, &st->req_overflow, s->request_msec);

    if (s->response_msec >= 0) {
        uint64_t ms = (uint64_t) s->response_msec;
        if (ms) {
            ngx_http_vts_add(&st->response_msec_total, ms);
        }
        pos = __atomic_fetch_add(&st->resp_pos, 1, __ATOMIC_RELAXED);
        smp = &st->resp_samples[pos % NGX_HTTP_VTS_AVG_SAMPLES];
        ngx_http_vts_store(&smp->msec, ms);
        ngx_http_vts_store(&smp->time, s->now);
        count_buckets(st, st->resp_buckets, &st->resp_overflow, ms);
    }
}


ngx_int_t
cache_index(ngx_http_request_t *r)
{
#if (NGX_HTTP_CACHE)
    if (r->upstream == NULL) {
        return -1;
    }
    ngx_uint_t cs = r->upstream->cache_status;
    switch (cs) {
    case NGX_HTTP_CACHE_MISS: return NGX_HTTP_VTS_CACHE_MISS;
    case NGX_HTTP_CACHE_BYPASS: return NGX_HTTP_VTS_CACHE_BYPASS;
    case NGX_HTTP_CACHE_EXPIRED: return NGX_HTTP_VTS_CACHE_EXPIRED;
    case NGX_HTTP_CACHE_STALE: return NGX_HTTP_VTS_CACHE_STALE;
    case NGX_HTTP_CACHE_UPDATING: return NGX_HTTP_VTS_CACHE_UPDATING;
    case NGX_HTTP_CACHE_REVALIDATED: return NGX_HTTP_VTS_CACHE_REVALIDATED;
    case NGX_HTTP_CACHE_HIT: return NGX_HTTP_VTS_CACHE_HIT;
    case NGX_HTTP_CACHE_SCARCE: return NGX_HTTP_VTS_CACHE_SCARCE;
    default: return -1;
    }
#else
    return -1;
#endif
}


uint8_t
filter_limit(ngx_http_vts_main_conf_t *vmcf, ngx_str_t *group)
{
    if (vmcf->limits == NULL) {
        return 0;
    }
    ngx_http_vts_limit_t *l = (ngx_http_vts_limit_t *) vmcf->limits->elts;
    ngx_int_t any = -1;

    for (ngx_uint_t i = 0; i < vmcf->limits->nelts; i++) {
        if (l[i].prefix.len == 0) {
            if (any < 0) {
                any = (ngx_int_t) i;
            }
            continue;
        }
        if (group->len >= l[i].prefix.len
            && ngx_strncmp(group->data, l[i].prefix.data, l[i].prefix.len) == 0)
        {
            return (uint8_t) (i + 2);
        }
    }
    return any >= 0 ? (uint8_t) (any + 2) : 0;
}


void
count_filters(ngx_http_request_t *r, ngx_http_vts_main_conf_t *vmcf,
    ngx_http_vts_loc_conf_t *vlcf, sample_t *s)
{
    ngx_http_vts_filter_t *f = (ngx_http_vts_filter_t *) vlcf->filters->elts;
    ngx_uint_t n = vlcf->filters->nelts;
    ngx_str_t keys[16], names[16];
    ngx_uint_t done = 0;

    for (ngx_uint_t i = 0; i < n; i++) {
        ngx_str_t key, name;

        if (ngx_http_complex_value(r, &f[i].key, &key) != NGX_OK
            || ngx_http_complex_value(r, &f[i].name, &name) != NGX_OK)
        {
            continue;
        }
        if (key.len == 0) {
            continue;
        }

        if (vlcf->filter_check_duplicate) {
            bool dup = false;
            for (ngx_uint_t j = 0; j < done && j < 16; j++) {
                if (keys[j].len == key.len && names[j].len == name.len
                    && ngx_memcmp(keys[j].data, key.data, key.len) == 0
                    && ngx_memcmp(names[j].data, name.data, name.len) == 0)
                {
                    dup = true;
                    break;
                }
            }
            if (dup) {
                continue;
            }
            if (done < 16) {
                keys[done] = key;
                names[done] = name;
                done++;
            }
        }

        ngx_http_vts_node_t *node = get_node(vmcf, NGX_HTTP_VTS_FILTER, &name,
                                             &key, vlcf->buckets,
                                             filter_limit(vmcf, &name));
        if (node) {
            count(&node->stats, s);
        }
    }
}


ngx_int_t
log_handler(ngx_http_request_t *r)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *)
        ngx_http_get_module_main_conf(r, ngx_http_vts_module);

    if (!vmcf->enable || vmcf->sh == NULL) {
        return NGX_DECLINED;
    }

    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *)
        ngx_http_get_module_loc_conf(r, ngx_http_vts_module);

    if (!vlcf->enable || vlcf->bypass_stats) {
        return NGX_DECLINED;
    }

    uint64_t gen = __atomic_load_n(&vmcf->sh->generation, __ATOMIC_ACQUIRE);
    if (gen != worker_cache_gen && worker_cache) {
        ngx_memzero(worker_cache,
                    sizeof(cache_slot_t) * NGX_HTTP_VTS_CACHE_SLOTS);
        worker_cache_gen = gen;
    }

    ngx_time_t *tp = ngx_timeofday();
    ngx_msec_int_t ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                                          + (tp->msec - r->start_msec));

    sample_t s;
    s.status = r->err_status ? r->err_status : r->headers_out.status;
    s.in = (uint64_t) (r->request_length > 0 ? r->request_length : 0);
    s.out = (uint64_t) (r->connection->sent > 0 ? r->connection->sent : 0);
    s.request_msec = (uint64_t) ngx_max(ms, 0);
    s.response_msec = -1;
    s.cache = cache_index(r);
    s.now = (uint64_t) tp->sec * 1000 + tp->msec;

    /* the server zone */
    ngx_http_core_srv_conf_t *cscf = (ngx_http_core_srv_conf_t *)
        ngx_http_get_module_srv_conf(r, ngx_http_core_module);
    ngx_str_t server = cscf->server_name;
    if (server.len == 0) {
        ngx_str_set(&server, "_");
    }

    ngx_http_vts_node_t *node = NULL;
    if (vlcf->filter_by_host && r->headers_in.server.len) {
        ngx_str_t host = r->headers_in.server;
        node = get_node(vmcf, NGX_HTTP_VTS_SERVER, &empty_group, &host,
                        vlcf->buckets, 1);
    }
    if (node == NULL) {
        node = get_node(vmcf, NGX_HTTP_VTS_SERVER, &empty_group, &server,
                        vlcf->buckets, 0);
    }
    count(node ? &node->stats : &vmcf->sh->overflow, &s);

    /* filter zones */
    if (vlcf->filter && vlcf->filters && vlcf->filters->nelts) {
        count_filters(r, vmcf, vlcf, &s);
    }

    /* the upstream peer that produced the response */
    if (r->upstream_states && r->upstream_states->nelts) {
        ngx_http_upstream_state_t *st =
            (ngx_http_upstream_state_t *) r->upstream_states->elts;
        ngx_http_upstream_state_t *last = NULL;

        for (ngx_uint_t i = r->upstream_states->nelts; i > 0; i--) {
            if (st[i - 1].peer) {
                last = &st[i - 1];
                break;
            }
        }

        if (last) {
            ngx_str_t group = nogroups;
            ngx_http_upstream_srv_conf_t *uscf =
                r->upstream ? r->upstream->upstream : NULL;
            if (uscf && (uscf->flags & NGX_HTTP_UPSTREAM_CREATE)) {
                group = uscf->host;
            }
            ngx_str_t peer = *last->peer;
            sample_t us = s;
            if (last->response_time != (ngx_msec_t) -1) {
                us.response_msec = (int64_t) last->response_time;
            } else {
                us.response_msec = 0;
            }
            if (last->status) {
                us.status = last->status;
            }
            node = get_node(vmcf, NGX_HTTP_VTS_UPSTREAM, &group, &peer,
                            vlcf->buckets, 0);
            if (node) {
                count(&node->stats, &us);
            }
        }
    }

#if (NGX_HTTP_CACHE)
    if (r->cache && r->cache->file_cache && r->cache->file_cache->shm_zone) {
        ngx_str_t name = r->cache->file_cache->shm_zone->shm.name;
        node = get_node(vmcf, NGX_HTTP_VTS_CACHE, &empty_group, &name,
                        NULL, 0);
        if (node) {
            count(&node->stats, &s);
        }
    }
#endif

    return NGX_DECLINED;
}


ngx_int_t
postconfiguration(ngx_conf_t *cf)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *)
        ngx_http_conf_get_module_main_conf(cf, ngx_http_vts_module);
    ngx_http_core_main_conf_t *cmcf = (ngx_http_core_main_conf_t *)
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    if (!vmcf->enable) {
        if (vmcf->dump_path.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"vhost_traffic_status_dump\" needs "
                               "\"vhost_traffic_status_zone\"");
            return NGX_ERROR;
        }
        return NGX_OK;
    }

    ngx_http_handler_pt *h = (ngx_http_handler_pt *)
        ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = log_handler;
    return NGX_OK;
}


/* ----------------------------------------------------------------------
 * processes and dump
 */

void
dump_handler(ngx_event_t *ev)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) ev->data;

    ngx_http_vts_dump_save(vmcf, ev->log);
    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, vmcf->dump_period);
    }
}


ngx_http_vts_main_conf_t *
cycle_main_conf(ngx_cycle_t *cycle)
{
    if (cycle->conf_ctx == NULL || cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NULL;
    }
    return (ngx_http_vts_main_conf_t *)
        ngx_http_cycle_get_module_main_conf(cycle, ngx_http_vts_module);
}


ngx_int_t
init_process(ngx_cycle_t *cycle)
{
    ngx_http_vts_main_conf_t *vmcf = cycle_main_conf(cycle);

    if (vmcf == NULL || !vmcf->enable) {
        return NGX_OK;
    }

    worker_cache = (cache_slot_t *) ngx_pcalloc(cycle->pool,
        sizeof(cache_slot_t) * NGX_HTTP_VTS_CACHE_SLOTS);
    if (worker_cache == NULL) {
        return NGX_ERROR;
    }
    worker_cache_gen = __atomic_load_n(&vmcf->sh->generation, __ATOMIC_ACQUIRE);

    if (vmcf->dump_path.len && ngx_worker == 0) {
        ngx_memzero(&dump_event, sizeof(dump_event));
        dump_event.handler = dump_handler;
        dump_event.data = vmcf;
        dump_event.log = cycle->log;
        dump_event.cancelable = 1;
        ngx_add_timer(&dump_event, vmcf->dump_period);
    }
    return NGX_OK;
}


void
exit_process(ngx_cycle_t *cycle)
{
    ngx_http_vts_main_conf_t *vmcf = cycle_main_conf(cycle);

    if (vmcf && vmcf->enable && vmcf->dump_path.len && ngx_worker == 0
        && vmcf->sh)
    {
        ngx_http_vts_dump_save(vmcf, cycle->log);
    }
}


void
exit_master(ngx_cycle_t *cycle)
{
    ngx_http_vts_main_conf_t *vmcf = cycle_main_conf(cycle);

    if (vmcf && vmcf->enable && vmcf->dump_path.len && vmcf->sh) {
        ngx_http_vts_dump_save(vmcf, cycle->log);
    }
}

} // namespace


ngx_int_t
ngx_http_vts_dump_save(ngx_http_vts_main_conf_t *vmcf, ngx_log_t *log)
{
    /* snapshot under the lock into a heap buffer, write it without it */
    ngx_shmtx_lock(&vmcf->shpool->mutex);

    size_t size = 3 * sizeof(uint64_t);
    for (ngx_queue_t *q = ngx_queue_head(&vmcf->sh->queue);
         q != ngx_queue_sentinel(&vmcf->sh->queue); q = ngx_queue_next(q))
    {
        ngx_http_vts_node_t *n = ngx_queue_data(q, ngx_http_vts_node_t, queue);
        size += 3 * sizeof(uint32_t) + sizeof(ngx_http_vts_stats_t)
                + n->group_len + n->name_len;
    }

    u_char *buf = (u_char *) ngx_alloc(size, log);
    if (buf == NULL) {
        ngx_shmtx_unlock(&vmcf->shpool->mutex);
        return NGX_ERROR;
    }

    u_char *p = buf;
    uint64_t hdr[3] = { NGX_HTTP_VTS_DUMP_MAGIC, sizeof(ngx_http_vts_stats_t),
                        vmcf->sh->start_msec };
    p = ngx_cpymem(p, hdr, sizeof(hdr));

    for (ngx_queue_t *q = ngx_queue_head(&vmcf->sh->queue);
         q != ngx_queue_sentinel(&vmcf->sh->queue); q = ngx_queue_next(q))
    {
        ngx_http_vts_node_t *n = ngx_queue_data(q, ngx_http_vts_node_t, queue);
        uint32_t rec[3] = { n->type, n->group_len, n->name_len };
        ngx_http_vts_stats_t st;
        uint64_t *src = (uint64_t *) &n->stats, *dst = (uint64_t *) &st;
        for (size_t i = 0; i < sizeof(st) / sizeof(uint64_t); i++) {
            dst[i] = ngx_http_vts_load(&src[i]);
        }
        p = ngx_cpymem(p, rec, sizeof(rec));
        p = ngx_cpymem(p, &st, sizeof(st));
        p = ngx_cpymem(p, n->data, n->group_len + n->name_len);
    }

    ngx_shmtx_unlock(&vmcf->shpool->mutex);

    u_char tmp[NGX_MAX_PATH];
    u_char *last = ngx_snprintf(tmp, sizeof(tmp) - 1, "%V.%P.tmp",
                                &vmcf->dump_path, ngx_pid);
    *last = '\0';

    ngx_int_t rc = NGX_ERROR;
    ngx_fd_t fd = ngx_open_file(tmp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                                NGX_FILE_DEFAULT_ACCESS);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "vhost_traffic_status: cannot open \"%s\"", tmp);
    } else {
        ssize_t n = write(fd, buf, size);
        ngx_close_file(fd);
        if (n != (ssize_t) size) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                          "vhost_traffic_status: cannot write \"%s\"", tmp);
            ngx_delete_file(tmp);
        } else if (ngx_rename_file(tmp, vmcf->dump_path.data) == NGX_FILE_ERROR) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                          "vhost_traffic_status: cannot rename \"%s\"", tmp);
            ngx_delete_file(tmp);
        } else {
            rc = NGX_OK;
        }
    }

    ngx_free(buf);
    return rc;
}
