/*
 * traffic-status: upstream peers.  The one reader of nginx's peer lists:
 * the walk every view shows (listed and removed peers, ngx_http_vts_upstreams),
 * worker 0's sweep that feeds the store's peer lifecycle (vts_store.h),
 * and vhost_traffic_status_removed_peers.
 *
 * Since nginx 1.27.3 a zone upstream's list changes at run time (`server
 * NAME resolve`): worker 0's resolver appends new addresses at the tail,
 * unlinks the removed ones and frees their names, under the list's write
 * lock; SRV answers of a lower priority go to the backup list, which has a
 * lock of its own.  So each list is read under its own read lock and every
 * name is copied before the lock is released.
 */

#include "vts_display.h"

#include <algorithm>

#define NGX_HTTP_VTS_SWEEP_MSEC         1000
#define NGX_HTTP_VTS_RETAIN_MSEC        600000      /* 10m */
#define NGX_HTTP_VTS_RETAIN_MAX         32
#define NGX_HTTP_VTS_RETAIN_MAX_LIMIT   65535

typedef ngx_http_vts_peer_t      peer_t;
typedef ngx_http_vts_upstream_t  upstream_t;

namespace {

int
str_cmp(ngx_str_t a, ngx_str_t b)
{
    return ngx_memn2cmp(a.data, b.data, a.len, b.len);
}


/* the upstream{} blocks with a peer list; nullptr: none */
ngx_http_upstream_srv_conf_t **
upstream_confs(ngx_http_upstream_main_conf_t *umcf, ngx_uint_t *n)
{
    *n = umcf ? umcf->upstreams.nelts : 0;
    return umcf ? (ngx_http_upstream_srv_conf_t **) umcf->upstreams.elts
                : nullptr;
}


bool
has_peers(ngx_http_upstream_srv_conf_t *uscf)
{
    return (uscf->flags & NGX_HTTP_UPSTREAM_CREATE) && uscf->peer.data;
}


void
peer_from(peer_t *pi, ngx_http_upstream_rr_peer_t *p, bool backup)
{
    ngx_memzero(pi, sizeof(*pi));
    pi->weight = (ngx_uint_t) p->weight;
    pi->max_fails = p->max_fails;
    pi->fail_timeout = p->fail_timeout;
    pi->backup = backup;
    /* a bit set since nginx 1.29.6: failed, draining */
    pi->down = (p->down & NGX_HTTP_UPSTREAM_FAILED) != 0;
#ifdef NGX_HTTP_UPSTREAM_DRAINING
    pi->drain = (p->down & NGX_HTTP_UPSTREAM_DRAINING) != 0;
#endif
#if (NGX_HTTP_UPSTREAM_ZONE)
    pi->resolved = p->host != nullptr;
#endif
}


/*
 * Appends the peers of one list to *arr, names copied into the pool,
 * under the list's read lock (a streamed render never pauses meanwhile).
 */
ngx_int_t
copy_list(ngx_pool_t *pool, ngx_http_upstream_rr_peers_t *peers, bool backup,
    ngx_array_t *arr)
{
    ngx_int_t rc = NGX_OK;

    ngx_http_upstream_rr_peers_rlock(peers);
    {
    ngx_http_vts_no_pause_t no_pause;
    for (ngx_http_upstream_rr_peer_t *p = peers->peer; p; p = p->next) {
        peer_t *pi = (peer_t *) ngx_array_push(arr);
        u_char *name = (u_char *) ngx_pnalloc(pool, p->name.len);
        if (pi == nullptr || (name == nullptr && p->name.len)) {
            rc = NGX_ERROR;
            break;
        }
        peer_from(pi, p, backup);
        pi->name.data = name;
        pi->name.len = p->name.len;
        ngx_memcpy(name, p->name.data, p->name.len);
    }
    }
    ngx_http_upstream_rr_peers_unlock(peers);
    return rc;
}


peer_t **
by_name(ngx_pool_t *pool, peer_t *p, ngx_uint_t n)
{
    peer_t **s = (peer_t **) ngx_palloc(pool, (n + 1) * sizeof(peer_t *));

    if (s == nullptr) {
        return nullptr;
    }
    for (ngx_uint_t i = 0; i < n; i++) {
        s[i] = &p[i];
    }
    /* equal names in list order: the first one is kept */
    std::sort(s, s + n, [](peer_t *a, peer_t *b) {
        int rc = str_cmp(a->name, b->name);
        return rc ? rc < 0 : a < b;
    });
    return s;
}


/* each name once, the first in list order: two server lines may resolve
   to one address, and a peer may move from one list to the other between
   the copies of the two lists */
ngx_int_t
dedupe(ngx_pool_t *pool, ngx_array_t *arr)
{
    peer_t *p = (peer_t *) arr->elts;
    ngx_uint_t n = arr->nelts;
    peer_t **s = by_name(pool, p, n);
    bool *dup = (bool *) ngx_pcalloc(pool, n + 1);

    if (s == nullptr || dup == nullptr) {
        return NGX_ERROR;
    }
    for (ngx_uint_t i = 1; i < n; i++) {
        dup[s[i] - p] = str_cmp(s[i - 1]->name, s[i]->name) == 0;
    }
    ngx_uint_t k = 0;
    for (ngx_uint_t i = 0; i < n; i++) {
        if (!dup[i]) {
            p[k++] = p[i];
        }
    }
    arr->nelts = k;
    return NGX_OK;
}


/* the listed peers of an upstream, primary then backup, each name once;
   *sorted: pointers to them by name */
ngx_int_t
listed_peers(ngx_pool_t *pool, ngx_http_upstream_srv_conf_t *uscf,
    ngx_array_t *arr, peer_t ***sorted)
{
    ngx_http_upstream_rr_peers_t *peers =
        (ngx_http_upstream_rr_peers_t *) uscf->peer.data;

    if (ngx_array_init(arr, pool, 8, sizeof(peer_t)) != NGX_OK
        || copy_list(pool, peers, false, arr) != NGX_OK
        || (peers->next && copy_list(pool, peers->next, true, arr) != NGX_OK)
        || dedupe(pool, arr) != NGX_OK)
    {
        return NGX_ERROR;
    }
    *sorted = by_name(pool, (peer_t *) arr->elts, arr->nelts);
    return *sorted ? NGX_OK : NGX_ERROR;
}


peer_t *
find_sorted(peer_t **sorted, ngx_uint_t n, ngx_str_t name)
{
    peer_t **end = sorted + n;
    peer_t **it = std::lower_bound(sorted, end, name,
        [](peer_t *a, ngx_str_t b) { return str_cmp(a->name, b) < 0; });

    return it != end && str_cmp((*it)->name, name) == 0 ? *it : nullptr;
}

} // namespace


/* ----------------------------------------------------------------------
 * the walk of every view
 */

namespace {

typedef ngx_http_vts_node_t     node_t;
typedef ngx_http_vts_retired_t  retired_t;


/* appends the removed peers kept of an upstream (cand: its removed
   nodes), by name; returns how many */
ngx_uint_t
append_removed(vts_render_t &rd, retired_t *cand, ngx_uint_t n, peer_t *out)
{
    ngx_uint_t capped;
    ngx_uint_t kept = ngx_http_vts_store_retained(&rd.vmcf->store, cand, n,
                                                  rd.now, &capped);

    std::sort(cand, cand + kept, [](const retired_t &a, const retired_t &b) {
        return str_cmp(ngx_http_vts_node_name(a.node),
                       ngx_http_vts_node_name(b.node)) < 0;
    });
    for (ngx_uint_t i = 0; i < kept; i++) {
        node_t *node = cand[i].node;
        uint64_t at = ngx_http_vts_load(&node->peer_removed);
        ngx_memzero(&out[i], sizeof(peer_t));
        out[i].name = ngx_http_vts_node_name(node);
        out[i].removed = true;
        out[i].removed_at = at ? at : rd.now;   /* (before worker 0's look) */
        out[i].added = ngx_http_vts_load(&node->peer_added);
        out[i].node = node;
    }
    return kept;
}


/* the lifecycle fields of a listed peer; one that came back before worker
   0's sweep saw it go is new again, as the sweep will say */
void
listed_lifecycle(vts_render_t &rd, peer_t *p)
{
    if (p->node == nullptr) {
        return;
    }
    p->added = ngx_http_vts_load(&p->node->peer_removed)
               ? rd.now : ngx_http_vts_load(&p->node->peer_added);
}


/* one upstream{}: its listed peers, then its removed peers kept */
ngx_int_t
configured_upstream(vts_render_t &rd, ngx_http_upstream_srv_conf_t *uscf,
    upstream_t *u)
{
    ngx_pool_t *pool = rd.r->pool;
    ngx_array_t arr;
    peer_t **sorted;
    ngx_uint_t first, last;

    if (listed_peers(pool, uscf, &arr, &sorted) != NGX_OK) {
        return NGX_ERROR;
    }
    ngx_http_vts_snapshot_group(&rd.snap, NGX_HTTP_VTS_UPSTREAM, uscf->host,
                                &first, &last);
    ngx_uint_t n = arr.nelts, c = 0;
    peer_t *peers = (peer_t *) ngx_palloc(pool, (n + last - first + 1)
                                                * sizeof(peer_t));
    retired_t *cand = (retired_t *) ngx_palloc(pool,
                                               (last - first + 1)
                                               * sizeof(retired_t));
    if (peers == nullptr || cand == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(peers, arr.elts, n * sizeof(peer_t));
    for (ngx_uint_t i = 0; i < n; i++) {
        peers[i].node = ngx_http_vts_snapshot_find(&rd.snap,
                            NGX_HTTP_VTS_UPSTREAM, uscf->host, peers[i].name);
        listed_lifecycle(rd, &peers[i]);
    }
    for (ngx_uint_t i = first; i < last; i++) {
        node_t *node = rd.snap.nodes[i];
        if (!node->deleted
            && find_sorted(sorted, n, ngx_http_vts_node_name(node)) == nullptr)
        {
            cand[c++].node = node;
        }
    }
    u->group = uscf->host;
    u->peers = peers;
    u->n = n + append_removed(rd, cand, c, peers + n);
    return NGX_OK;
}


/* the entries of one zone-only group [first, last) of the snapshot:
   ::nogroups as they are, another group's as removed peers (its upstream{}
   left the configuration); false: nothing to show */
bool
zone_group(vts_render_t &rd, ngx_uint_t first, ngx_uint_t last, peer_t *out,
    retired_t *cand, upstream_t *u)
{
    ngx_uint_t c = 0;

    u->group = ngx_http_vts_node_group(rd.snap.nodes[first]);
    u->peers = out;
    for (ngx_uint_t i = first; i < last; i++) {
        if (!rd.snap.nodes[i]->deleted) {
            cand[c++].node = rd.snap.nodes[i];
        }
    }
    if (!ngx_http_vts_is_nogroups(u->group)) {
        u->n = append_removed(rd, cand, c, out);
        return u->n > 0;
    }
    for (ngx_uint_t i = 0; i < c; i++) {
        ngx_memzero(&out[i], sizeof(peer_t));
        out[i].name = ngx_http_vts_node_name(cand[i].node);
        out[i].node = cand[i].node;
    }
    u->n = c;
    return c > 0;
}


bool
is_configured(ngx_str_t *groups, ngx_uint_t n, ngx_str_t group)
{
    ngx_str_t *end = groups + n;
    ngx_str_t *it = std::lower_bound(groups, end, group,
        [](const ngx_str_t &a, ngx_str_t b) { return str_cmp(a, b) < 0; });
    return it != end && str_cmp(*it, group) == 0;
}


/* the groups of the zone without an upstream{} (by name), then
   ::nogroups; groups: the configured ones, sorted */
ngx_int_t
zone_upstreams(vts_render_t &rd, ngx_str_t *groups, ngx_uint_t ngroups,
    ngx_array_t *ups)
{
    ngx_uint_t first, last;

    ngx_http_vts_snapshot_range(&rd.snap, NGX_HTTP_VTS_UPSTREAM, &first, &last);
    peer_t *out = (peer_t *) ngx_palloc(rd.r->pool,
                                        (last - first + 1) * sizeof(peer_t));
    retired_t *cand = (retired_t *) ngx_palloc(rd.r->pool,
                                               (last - first + 1)
                                               * sizeof(retired_t));
    if (out == nullptr || cand == nullptr) {
        return NGX_ERROR;
    }
    upstream_t nogroups = {};
    for (ngx_uint_t i = first, j; i < last; i = j) {
        ngx_str_t group = ngx_http_vts_node_group(rd.snap.nodes[i]);
        for (j = i + 1; j < last && ngx_http_vts_str_eq(
                 ngx_http_vts_node_group(rd.snap.nodes[j]), &group); j++)
        { /* void */ }

        bool alone = ngx_http_vts_is_nogroups(group);
        upstream_t u;
        if ((!alone && is_configured(groups, ngroups, group))
            || !zone_group(rd, i, j, out + (i - first), cand, &u))
        {
            continue;
        }
        if (alone) {
            nogroups = u;
            continue;
        }
        upstream_t *slot = (upstream_t *) ngx_array_push(ups);
        if (slot == nullptr) {
            return NGX_ERROR;
        }
        *slot = u;
    }
    if (nogroups.n) {
        upstream_t *slot = (upstream_t *) ngx_array_push(ups);
        if (slot == nullptr) {
            return NGX_ERROR;
        }
        *slot = nogroups;
    }
    return NGX_OK;
}

} // namespace


ngx_int_t
ngx_http_vts_upstreams(vts_render_t &rd)
{
    if (rd.upstreams) {
        return NGX_OK;
    }
    ngx_uint_t n;
    ngx_http_upstream_srv_conf_t **uscf = upstream_confs(
        (ngx_http_upstream_main_conf_t *)
            ngx_http_get_module_main_conf(rd.r, ngx_http_upstream_module), &n);
    ngx_array_t ups;
    ngx_str_t *groups = (ngx_str_t *) ngx_palloc(rd.r->pool,
                                                 (n + 1) * sizeof(ngx_str_t));
    ngx_uint_t ngroups = 0;

    if (groups == nullptr
        || ngx_array_init(&ups, rd.r->pool, n + 2, sizeof(upstream_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }
    for (ngx_uint_t i = 0; i < n; i++) {
        if (!has_peers(uscf[i])) {
            continue;
        }
        upstream_t *u = (upstream_t *) ngx_array_push(&ups);
        if (u == nullptr || configured_upstream(rd, uscf[i], u) != NGX_OK) {
            return NGX_ERROR;
        }
        groups[ngroups++] = uscf[i]->host;
    }
    std::sort(groups, groups + ngroups, [](const ngx_str_t &a,
                                           const ngx_str_t &b) {
        return str_cmp(a, b) < 0;
    });
    if (zone_upstreams(rd, groups, ngroups, &ups) != NGX_OK) {
        return NGX_ERROR;
    }
    rd.upstreams = (upstream_t *) ups.elts;
    rd.nupstreams = ups.nelts;
    return NGX_OK;
}


/* ----------------------------------------------------------------------
 * worker 0's sweep: every upstream's listed peers into the store's peer
 * lifecycle, once a second
 */

namespace {

struct sweep_t {
    ngx_event_t             ev;
    ngx_pool_t             *pool;       /* the last sweep's lists */
    ngx_http_vts_listed_t  *listed;     /* by group */
    ngx_uint_t              n;
    bool                    looked;     /* a sweep ran: joins are known */
};

sweep_t  sweep;


/* was name listed at the last sweep? */
bool
listed_before(ngx_str_t group, ngx_str_t name)
{
    ngx_http_vts_listed_t *end = sweep.listed + sweep.n;
    ngx_http_vts_listed_t *l = std::lower_bound(sweep.listed, end, group,
        [](const ngx_http_vts_listed_t &a, ngx_str_t b) {
            return str_cmp(a.group, b) < 0;
        });

    if (l == end || str_cmp(l->group, group) != 0) {
        return false;
    }
    return std::binary_search(l->names, l->names + l->n, name,
        [](const ngx_str_t &a, const ngx_str_t &b) {
            return str_cmp(a, b) < 0;
        });
}


/* one upstream's names, sorted, with the peers that joined since */
ngx_int_t
listed_names(ngx_pool_t *pool, ngx_http_upstream_srv_conf_t *uscf,
    ngx_http_vts_listed_t *l)
{
    ngx_array_t arr;
    peer_t **sorted;

    if (listed_peers(pool, uscf, &arr, &sorted) != NGX_OK) {
        return NGX_ERROR;
    }
    l->group = uscf->host;
    l->n = arr.nelts;
    l->names = (ngx_str_t *) ngx_palloc(pool, (l->n + 1) * sizeof(ngx_str_t));
    l->flags = (uint8_t *) ngx_pcalloc(pool, l->n + 1);
    if (l->names == nullptr || l->flags == nullptr) {
        return NGX_ERROR;
    }
    for (ngx_uint_t i = 0; i < l->n; i++) {
        l->names[i] = sorted[i]->name;
        if (!sorted[i]->resolved) {
            l->flags[i] = NGX_HTTP_VTS_PEER_CONFIGURED;
        }
        if (sweep.looked && !listed_before(l->group, l->names[i])) {
            l->flags[i] |= NGX_HTTP_VTS_PEER_JOINED;
        }
    }
    return NGX_OK;
}


/* the http{} level's histogram buckets, for the entries the sweep makes
   (that level is never merged: unset there means none) */
ngx_array_t *
http_buckets(ngx_cycle_t *cycle)
{
    ngx_http_conf_ctx_t *ctx =
        (ngx_http_conf_ctx_t *) cycle->conf_ctx[ngx_http_module.index];
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *)
        ctx->loc_conf[ngx_http_vts_module.ctx_index];

    return vlcf->buckets == NGX_CONF_UNSET_PTR ? nullptr : vlcf->buckets;
}


ngx_int_t
sweep_once(ngx_http_vts_main_conf_t *vmcf, ngx_cycle_t *cycle)
{
    ngx_uint_t n, k = 0;
    ngx_http_upstream_srv_conf_t **uscf = upstream_confs(
        (ngx_http_upstream_main_conf_t *)
            ngx_http_cycle_get_module_main_conf(cycle,
                                                ngx_http_upstream_module), &n);
    ngx_pool_t *pool = ngx_create_pool(NGX_DEFAULT_POOL_SIZE, cycle->log);
    if (pool == nullptr) {
        return NGX_ERROR;
    }
    ngx_http_vts_listed_t *listed = (ngx_http_vts_listed_t *)
        ngx_palloc(pool, (n + 1) * sizeof(ngx_http_vts_listed_t));
    for (ngx_uint_t i = 0; listed && i < n; i++) {
        if (has_peers(uscf[i])
            && listed_names(pool, uscf[i], &listed[k++]) != NGX_OK)
        {
            listed = nullptr;
        }
    }
    if (listed == nullptr) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }
    std::sort(listed, listed + k, [](const ngx_http_vts_listed_t &a,
                                     const ngx_http_vts_listed_t &b) {
        return str_cmp(a.group, b.group) < 0;
    });
    ngx_http_vts_store_sweep_peers(&vmcf->store, listed, k,
                                   vmcf->stats_by_upstream != 0,
                                   http_buckets(cycle), pool);
    if (sweep.pool) {
        ngx_destroy_pool(sweep.pool);
    }
    sweep.pool = pool;
    sweep.listed = listed;
    sweep.n = k;
    sweep.looked = true;
    return NGX_OK;
}


void
sweep_handler(ngx_event_t *ev)
{
    /* an old generation's worker 0 (a reload) would judge the new
       configuration's peers by its own lists */
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }
    ngx_cycle_t *cycle = (ngx_cycle_t *) ngx_cycle;
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) ev->data;

    if (sweep_once(vmcf, cycle) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "vhost_traffic_status: no memory to sweep upstream "
                      "peers");
    }
    ngx_add_timer(ev, NGX_HTTP_VTS_SWEEP_MSEC);
}

} // namespace


void
ngx_http_vts_peers_start_sweep(ngx_http_vts_main_conf_t *vmcf,
    ngx_cycle_t *cycle)
{
    ngx_memzero(&sweep, sizeof(sweep));
    sweep.ev.handler = sweep_handler;
    sweep.ev.data = vmcf;
    sweep.ev.log = cycle->log;
    sweep.ev.cancelable = 1;
    /* at once: peers listed before the first look are not "new" */
    ngx_add_timer(&sweep.ev, 1);
}


/* ----------------------------------------------------------------------
 * vhost_traffic_status_removed_peers EXPIRE [max=N] | off
 */

namespace {

/* "max=N" -> store->retain_max; false after logging the error */
bool
parse_max(ngx_conf_t *cf, ngx_str_t *v, ngx_http_vts_store_t *store)
{
    static const ngx_str_t key = ngx_string("max=");
    ngx_int_t max = NGX_ERROR;

    if (v->len > key.len && ngx_strncmp(v->data, key.data, key.len) == 0) {
        max = ngx_atoi(v->data + key.len, v->len - key.len);
    }
    if (max == NGX_ERROR || max < 1 || max > NGX_HTTP_VTS_RETAIN_MAX_LIMIT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\", "
                           "expected max=N with N from 1 to %d", v,
                           NGX_HTTP_VTS_RETAIN_MAX_LIMIT);
        return false;
    }
    store->retain_max = (ngx_uint_t) max;
    return true;
}

} // namespace


char *
ngx_http_vts_removed_peers(ngx_conf_t *cf, ngx_command_t *, void *conf)
{
    ngx_http_vts_store_t *store = &((ngx_http_vts_main_conf_t *) conf)->store;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (store->retain_msec != NGX_CONF_UNSET_MSEC) {
        return (char *) "is duplicate";
    }
    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"off\" takes no "
                               "\"%V\"", &value[2]);
            return (char *) NGX_CONF_ERROR;
        }
        store->retain_msec = 0;
        store->retain_max = 0;
        return NGX_CONF_OK;
    }
    ngx_int_t t = ngx_parse_time(&value[1], 0);
    if (t == NGX_ERROR || t == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid expiry \"%V\", "
                           "expected a time such as 10m, or off", &value[1]);
        return (char *) NGX_CONF_ERROR;
    }
    store->retain_msec = (ngx_msec_t) t;
    if (cf->args->nelts == 3 && !parse_max(cf, &value[2], store)) {
        return (char *) NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


void
ngx_http_vts_removed_peers_init(ngx_http_vts_store_t *store)
{
    ngx_conf_init_msec_value(store->retain_msec, NGX_HTTP_VTS_RETAIN_MSEC);
    ngx_conf_init_uint_value(store->retain_max, NGX_HTTP_VTS_RETAIN_MAX);
}
