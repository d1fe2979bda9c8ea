/*
 * traffic-status: the store's private part, shared by its three files
 * only (vts_store.cpp: the zone, node creation and the request path;
 * vts_store_read.cpp: snapshots, reads, reset/delete, restore;
 * vts_store_peers.cpp: the upstream peers' lifecycle).  No other file
 * includes this.
 */
#ifndef VTS_STORE_ZONE_H
#define VTS_STORE_ZONE_H

#include "vts_store.h"

/* The shared part: lives at the start of the zone, after the slab pool. */
struct ngx_http_vts_shctx_t {
    ngx_rbtree_t          rbtree;
    ngx_rbtree_node_t     sentinel;
    ngx_queue_t           queue;
    ngx_http_vts_node_t  *graveyard;
    uint64_t              buried;       /* nodes in the graveyard */
    uint64_t              generation;   /* bumped when a node is unlinked */
    uint64_t              nodes;
    uint64_t              host_nodes;   /* server zones keyed by Host */
    uint64_t              filter_nodes[NGX_HTTP_VTS_CAPS_MAX + 1];
    uint64_t              dropped_full;
    uint64_t              dropped_limit;
    uint64_t              dropped_evicted;
    uint64_t              used_bytes;   /* held by nodes (graveyard too) */
    uint64_t              start_msec;
    uint64_t              upgrade_from; /* pid of the master whose final
                                           dump is still to be merged */
    /* filter entries per group under the default cap: (group hash,
       count) slots, probed linearly; colliding groups share a count */
    uint32_t              group_hash[NGX_HTTP_VTS_GROUP_SLOTS];
    uint32_t              group_count[NGX_HTTP_VTS_GROUP_SLOTS];
    ngx_http_vts_stats_t  overflow;     /* requests whose server entry
                                           could not be stored: in the sum */
};

uint32_t ngx_http_vts_key_hash(uint8_t kind, ngx_str_t *group,
    ngx_str_t *name);
ngx_http_vts_node_t *ngx_http_vts_lookup_locked(ngx_http_vts_shctx_t *sh,
    uint8_t kind, ngx_str_t *group, ngx_str_t *name, uint32_t hash);
ngx_http_vts_node_t *ngx_http_vts_create_locked(ngx_http_vts_store_t *store,
    uint8_t kind, ngx_str_t *group, ngx_str_t *name, uint32_t hash,
    ngx_array_t *buckets);
/* create under the cap class's cap (a drop is counted) */
ngx_http_vts_node_t *ngx_http_vts_create_capped_locked(
    ngx_http_vts_store_t *store, uint8_t kind, ngx_str_t *group,
    ngx_str_t *name, uint32_t hash, uint8_t cap_class);
size_t ngx_http_vts_node_size(ngx_http_vts_node_t *n);
/* frees the unlinked nodes whose grace period is over */
void ngx_http_vts_graveyard_collect_locked(ngx_http_vts_store_t *store);
void ngx_http_vts_unlink_locked(ngx_http_vts_store_t *store,
    ngx_http_vts_node_t *node);

#endif /* VTS_STORE_ZONE_H */
