
/*
 * Live failures of proxied requests, recognised in C (see the header).
 *
 * The log handler runs for every request, so its common path is short:
 * no watched group in this worker (one load and compare), no upstream, a
 * group nobody watches (a hash probe), or one attempt whose status nobody
 * counts.  Only a failed attempt is copied (into memory allocated when the
 * first group was watched) and wakes the Lua side.
 *
 * Which requests and attempts count is what hc.report() in log_by_lua
 * decided before (passive.lua), so configs keep their meaning:
 *   - the request's group is watched: each attempt of its proxy_next_upstream
 *     chain is judged with the group's statuses;
 *   - the request has no group (a variable proxy_pass to an address), or its
 *     attempts span several groups (" : " in $upstream_addr, e.g. after an
 *     error_page redirect): each address is looked up by the Lua side among
 *     all checkers, so every watched status is recorded;
 *   - one attempt with a status no checker watches (nor 502/504) never
 *     counts, even with a failed connection (a client that went away).
 */


#include "ngx_lua_upstream_passive.h"


extern "C" int ngx_http_lua_ffi_sema_post(ngx_http_lua_sema_s *sem, int n);


namespace ngx_lua_upstream {


struct watch_t {
    const ngx_http_upstream_srv_conf_t  *uscf;
    ngx_str_t                            name;
    status_set_t                         statuses;
};


struct passive_t {
    /* open addressing by the group's srv conf; never more than half full */
    watch_t              **table;
    ngx_uint_t             mask;

    /* every watched status, 502 and 504: attempts looked up by address */
    status_set_t           any;

    ngx_http_lua_sema_s   *wake;
    bool                   posted;

    ngx_uint_t             n;
    ngx_uint_t             dropped;
    live_failure_t         failures[live_failures_max];
};


namespace {


lua_upstream_main_conf_t *
our_main_conf()
{
    ngx_cycle_t  *cycle = const_cast<ngx_cycle_t *>(ngx_cycle);

    if (main_conf() == nullptr) {
        return nullptr;         /* no http{} (or init_by_lua* on first start) */
    }

    return static_cast<lua_upstream_main_conf_t *>(
               ngx_http_cycle_get_module_main_conf(
                   cycle, ngx_http_lua_upstream_module));
}


ngx_uint_t
slot(const passive_t *p, const ngx_http_upstream_srv_conf_t *uscf)
{
    /* srv confs are pool allocations: the low bits say little */
    uint64_t  h = (reinterpret_cast<uintptr_t>(uscf) >> 4)
                  * UINT64_C(0x9e3779b97f4a7c15);

    return static_cast<ngx_uint_t>(h >> 32) & p->mask;
}


const watch_t *
find_watch(const passive_t *p, const ngx_http_upstream_srv_conf_t *uscf)
{
    for (ngx_uint_t i = slot(p, uscf); /* void */; i = (i + 1) & p->mask) {
        const watch_t  *w = p->table[i];

        if (w == nullptr || w->uscf == uscf) {
            return w;
        }
    }
}


/* the registry of this cycle, made when the first group is watched */
passive_t *
passive_create(ngx_cycle_t *cycle, ngx_uint_t groups)
{
    ngx_uint_t  size = 4;

    while (size < 2 * groups) {
        size <<= 1;
    }

    auto  *p = static_cast<passive_t *>(ngx_pcalloc(cycle->pool,
                                                    sizeof(passive_t)));
    if (p == nullptr) {
        return nullptr;
    }

    p->table = static_cast<watch_t **>(ngx_pcalloc(cycle->pool,
                                                   size * sizeof(watch_t *)));
    if (p->table == nullptr) {
        return nullptr;
    }

    p->mask = size - 1;
    status_add(&p->any, NGX_HTTP_BAD_GATEWAY);
    status_add(&p->any, NGX_HTTP_GATEWAY_TIME_OUT);

    return p;
}


void
wake_up(passive_t *p)
{
    if (!p->posted && p->wake != nullptr) {
        p->posted = true;
        (void) ngx_http_lua_ffi_sema_post(p->wake, 1);
    }
}


bool
attempt_failed(const status_set_t &statuses,
    const ngx_http_upstream_state_t &s)
{
    return status_in(statuses, s.status)
           || s.connect_time == static_cast<ngx_msec_t>(-1)
           || (s.header_time == static_cast<ngx_msec_t>(-1)
               && (s.status == NGX_HTTP_BAD_GATEWAY
                   || s.status == NGX_HTTP_GATEWAY_TIME_OUT));
}


void
record(ngx_http_request_t *r, passive_t *p, const watch_t *w,
    const ngx_http_upstream_state_t &s)
{
    if (s.peer == nullptr) {
        return;                 /* a " : " between groups, not an attempt */
    }

    if (s.peer->len > NGX_SOCKADDR_STRLEN) {
        /* no peer address is that long (nginx's "no live upstreams"
         * names the group instead) */
        return;
    }

    if (p->n == live_failures_max) {
        p->dropped++;
        wake_up(p);
        return;
    }

    live_failure_t  &f = p->failures[p->n++];

    f.upstream = w ? &w->name : nullptr;
    f.status = s.status;
    f.connect_failed = s.connect_time == static_cast<ngx_msec_t>(-1);
    f.no_header = s.header_time == static_cast<ngx_msec_t>(-1);
    f.addr_len = s.peer->len;
    ngx_memcpy(f.addr, s.peer->data, s.peer->len);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "lua upstream live failure: \"%V\" status %ui, %ui recorded",
                   s.peer, s.status, p->n);

    wake_up(p);
}


/* several attempts (proxy_next_upstream), maybe of several groups */
void
record_chain(ngx_http_request_t *r, passive_t *p, const watch_t *w,
    const ngx_http_upstream_state_t *state, ngx_uint_t n)
{
    for (ngx_uint_t i = 1; i < n; i++) {
        if (state[i].peer == nullptr) {
            w = nullptr;        /* several groups: each address names its own */
            break;
        }
    }

    const status_set_t  &statuses = w ? w->statuses : p->any;

    for (ngx_uint_t i = 0; i < n; i++) {
        if (state[i].peer != nullptr && attempt_failed(statuses, state[i])) {
            record(r, p, w, state[i]);
        }
    }
}


} /* namespace */


status_t
watch_live_failures(ngx_http_upstream_srv_conf_t *uscf, const ngx_str_t &name,
    const status_set_t &statuses, ngx_http_lua_sema_s *wake)
{
    lua_upstream_main_conf_t  *lmcf = our_main_conf();
    ngx_cycle_t               *cycle = const_cast<ngx_cycle_t *>(ngx_cycle);

    if (lmcf == nullptr) {
        return status_t::not_found;
    }

    if (lmcf->passive == nullptr) {
        lmcf->passive = passive_create(cycle, main_conf()->upstreams.nelts);
        if (lmcf->passive == nullptr) {
            return status_t::no_memory;
        }
    }

    passive_t  *p = lmcf->passive;
    ngx_uint_t  i = slot(p, uscf);

    while (p->table[i] != nullptr && p->table[i]->uscf != uscf) {
        i = (i + 1) & p->mask;
    }

    watch_t  *w = p->table[i];

    if (w == nullptr) {
        w = static_cast<watch_t *>(ngx_pcalloc(cycle->pool, sizeof(watch_t)));
        if (w == nullptr) {
            return status_t::no_memory;
        }

        w->name.data = static_cast<u_char *>(ngx_pnalloc(cycle->pool,
                                                         name.len));
        if (w->name.data == nullptr) {
            return status_t::no_memory;
        }

        w->uscf = uscf;
        w->name.len = name.len;
        ngx_memcpy(w->name.data, name.data, name.len);
        p->table[i] = w;
    }

    w->statuses = statuses;

    for (ngx_uint_t k = 0; k < 16; k++) {
        p->any.bits[k] |= statuses.bits[k];
    }

    p->wake = wake;

    return status_t::ok;
}


const live_failure_t *
live_failures(ngx_uint_t *n, ngx_uint_t *dropped)
{
    lua_upstream_main_conf_t  *lmcf = our_main_conf();
    passive_t                 *p = lmcf ? lmcf->passive : nullptr;

    *n = p ? p->n : 0;
    *dropped = p ? p->dropped : 0;

    return p ? p->failures : nullptr;
}


void
clear_live_failures()
{
    lua_upstream_main_conf_t  *lmcf = our_main_conf();
    passive_t                 *p = lmcf ? lmcf->passive : nullptr;

    if (p != nullptr) {
        p->n = 0;
        p->dropped = 0;
        p->posted = false;
    }
}


ngx_int_t
live_failures_log_handler(ngx_http_request_t *r)
{
    auto  *lmcf = static_cast<lua_upstream_main_conf_t *>(
                      ngx_http_get_module_main_conf(
                          r, ngx_http_lua_upstream_module));
    passive_t  *p = lmcf->passive;

    if (p == nullptr || r->upstream_states == nullptr
        || r->upstream_states->nelts == 0)
    {
        return NGX_OK;          /* no passive checker here, or not proxied */
    }

    const watch_t  *w = nullptr;

    if (r->upstream != nullptr && r->upstream->upstream != nullptr) {
        w = find_watch(p, r->upstream->upstream);

        if (w == nullptr) {
            return NGX_OK;      /* a group without passive checks */
        }
    }

    auto        *state = static_cast<ngx_http_upstream_state_t *>(
                             r->upstream_states->elts);
    ngx_uint_t   n = r->upstream_states->nelts;

    if (n > 1) {
        record_chain(r, p, w, state, n);
        return NGX_OK;
    }

    /* the common case: one attempt, and a status nobody counts */

    if (state->status != 0 && !status_in(p->any, state->status)) {
        return NGX_OK;
    }

    if (attempt_failed(w ? w->statuses : p->any, *state)) {
        record(r, p, w, *state);
    }

    return NGX_OK;
}


} /* namespace ngx_lua_upstream */
