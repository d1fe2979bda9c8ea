
/*
 * The nginx side of ngx.upstream: finding upstream groups and reading or
 * changing their round-robin peers under nginx's locks.  Nothing here calls
 * the Lua API, so nothing here can longjmp: these functions may hold locks
 * and use RAII guards.  The Lua bindings call them and only then touch Lua.
 */


#ifndef _NGX_LUA_UPSTREAM_CORE_H_INCLUDED_
#define _NGX_LUA_UPSTREAM_CORE_H_INCLUDED_


#include "ngx_cpp.h"

#include <type_traits>


namespace ngx_lua_upstream {


/* one peer, copied under the peers' read lock and the peer's own lock */
struct peer_snapshot_t {
    ngx_str_t    name;        /* points into the peer data, never freed */
    ngx_int_t    weight;
    ngx_int_t    current_weight;
    ngx_int_t    effective_weight;
    ngx_uint_t   conns;
    ngx_uint_t   fails;
    ngx_uint_t   max_fails;
    time_t       fail_timeout;
    time_t       accessed;
    time_t       checked;
    ngx_uint_t   down;
};

/* lives in Lua userdata and in frames that may longjmp */
static_assert(std::is_trivially_copyable_v<peer_snapshot_t>
              && std::is_trivially_destructible_v<peer_snapshot_t>);


/*
 * peer->down (and a server line's down) is a bit set since nginx 1.29.6:
 * failed (the `down` parameter, and what set_peer_down sets) and draining
 * (the `drain` parameter, sticky sessions only).  The two are reported and
 * changed separately; nginx 1.22 had only 0 and 1, the failed bit.
 */
#ifndef NGX_HTTP_UPSTREAM_FAILED
#define NGX_HTTP_UPSTREAM_FAILED  1
#endif

inline bool
peer_failed(ngx_uint_t down)
{
    return (down & NGX_HTTP_UPSTREAM_FAILED) != 0;
}

inline bool
peer_draining(ngx_uint_t down)
{
#ifdef NGX_HTTP_UPSTREAM_DRAINING
    return (down & NGX_HTTP_UPSTREAM_DRAINING) != 0;
#else
    (void) down;
    return false;
#endif
}


enum class status_t {
    ok,
    not_found,        /* "upstream not found" */
    no_peer_data,     /* "no peer data" */
    no_backup,        /* "no backup peers" */
    bad_peer_id       /* "bad peer id" */
};


const char *status_text(status_t s);


/* the running cycle's upstream{} groups; NULL before the first cycle */
ngx_http_upstream_main_conf_t *main_conf();

/* a group by its name: "host", or "host:port" when the group has a port */
ngx_http_upstream_srv_conf_t *find(ngx_http_upstream_main_conf_t *umcf,
    const u_char *name, size_t len);

/* the primary (backup == false) or backup peer list, or NULL */
ngx_http_upstream_rr_peers_t *peer_list(
    const ngx_http_upstream_srv_conf_t *uscf, bool backup);

/* copies up to max peers of the list; returns how many were copied */
ngx_uint_t snapshot(ngx_http_upstream_rr_peers_t *peers,
    peer_snapshot_t *out, ngx_uint_t max);

status_t set_peer_down(ngx_http_upstream_srv_conf_t *uscf, bool backup,
    long long id, bool down);


} /* namespace ngx_lua_upstream */


#endif /* _NGX_LUA_UPSTREAM_CORE_H_INCLUDED_ */
