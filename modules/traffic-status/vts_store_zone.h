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

/*
 * The key hash: the tree's order and the worker cache's slot (its low
 * bits).  Computed for every request's entries, so eight bytes a step (a
 * byte-wise CRC32 was the counting path's largest cost); any hash is
 * correct, collisions are ordered by the key itself (node_cmp).  Hashes
 * live only in the zone, never in a dump: a new binary may change them.
 */

#define NGX_HTTP_VTS_KEY_MUL  0x9e3779b97f4a7c15ULL


/* the last len (< 8) bytes at p as one word */
static inline uint64_t
ngx_http_vts_key_hash_tail(const u_char *p, size_t len)
{
    uint64_t  w = 0;
    unsigned  shift = 0;

    if (len & 4) {
        uint32_t x;
        ngx_memcpy(&x, p, 4);
        w = x;
        p += 4;
        shift = 32;
    }
    if (len & 2) {
        uint16_t x;
        ngx_memcpy(&x, p, 2);
        w |= (uint64_t) x << shift;
        p += 2;
        shift += 16;
    }
    if (len & 1) {
        w |= (uint64_t) *p << shift;
    }
    return w;
}


static inline uint64_t
ngx_http_vts_key_hash_bytes(uint64_t h, const u_char *p, size_t len)
{
    for ( /* void */ ; len >= 8; p += 8, len -= 8) {
        uint64_t w;
        ngx_memcpy(&w, p, 8);
        h = (h ^ w) * NGX_HTTP_VTS_KEY_MUL;
        h ^= h >> 32;
    }
    if (len) {
        h = h ^ ngx_http_vts_key_hash_tail(p, len);
        h *= NGX_HTTP_VTS_KEY_MUL;
        h ^= h >> 32;
    }
    return h;
}


static inline uint32_t
ngx_http_vts_key_hash(uint8_t kind, ngx_str_t *group, ngx_str_t *name)
{
    /* the lengths keep ("ab", "c") apart from ("a", "bc") */
    uint64_t h = ((uint64_t) kind << 56) ^ ((uint64_t) group->len << 28)
                 ^ name->len;

    h = ngx_http_vts_key_hash_bytes(h * NGX_HTTP_VTS_KEY_MUL, group->data,
                                    group->len);
    h = ngx_http_vts_key_hash_bytes(h, name->data, name->len);

    /* murmur3's finalizer: every input bit reaches the low bits */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t) h;
}


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
