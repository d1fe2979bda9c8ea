
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


/*
 * one peer, copied under the peers' read lock and the peer's own lock; its
 * strings are copied too (into the space after the snapshots): nginx's
 * resolver frees the names of peers DNS removed
 */
struct peer_snapshot_t {
    ngx_str_t    name;        /* "ip:port" */
    ngx_str_t    server;      /* the server line it came from */
    const void  *line;        /* identity of its `resolve` line, or NULL */
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


/* how much a snapshot of a peer list needs, read under its lock */
struct list_size_t {
    ngx_uint_t  peers;
    size_t      bytes;        /* the peers' strings */
};

/* where a snapshot goes: max snapshots, then len bytes for the strings */
struct snapshot_space_t {
    peer_snapshot_t  *peers;
    ngx_uint_t        max;
    u_char           *strings;
    size_t            len;
};

constexpr size_t
snapshot_space_size(const list_size_t &size)
{
    return (size.peers ? size.peers : 1) * sizeof(peer_snapshot_t)
           + size.bytes;
}


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
    bad_peer_id,      /* "bad peer id" */
    peers_changed,    /* "peers changed" */
    peer_not_found,   /* "peer not found" */
    not_resolved,     /* "no resolve servers" */
    no_memory         /* "no memory" */
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

/*
 * Does DNS change the group's peers at run time (`zone` and at least one
 * `server NAME resolve` line)?  Its peer ids then carry the generation they
 * were read at (see peer_id), static groups keep list positions.
 */
bool dynamic(const ngx_http_upstream_srv_conf_t *uscf);

/* the id a peer at `position` of a snapshot read at `generation` has */
long long peer_id(const ngx_http_upstream_srv_conf_t *uscf,
    ngx_uint_t position, ngx_uint_t generation);

list_size_t measure(ngx_http_upstream_rr_peers_t *peers);

/*
 * copies the list into space; false when it does not fit (the list changed
 * since it was measured: measure again).  *n and *generation are set.
 */
bool snapshot(ngx_http_upstream_rr_peers_t *peers, const snapshot_space_t &space,
    ngx_uint_t *n, ngx_uint_t *generation);

/* the generation counter of the group's peer lists (0: never changes) */
ngx_uint_t generation(ngx_http_upstream_srv_conf_t *uscf);

/* identity of the k-th `resolve` line of the primary or backup lines */
const void *resolve_line(ngx_http_upstream_srv_conf_t *uscf, bool backup,
    ngx_uint_t k);

status_t set_peer_down(ngx_http_upstream_srv_conf_t *uscf, bool backup,
    long long id, bool down);

/* every peer of the list with that address */
status_t set_peer_down_by_name(ngx_http_upstream_srv_conf_t *uscf,
    bool backup, const ngx_str_t &name, bool down);

/* the `down` new peers of the group's `resolve` lines start with */
status_t set_new_peers_down(ngx_http_upstream_srv_conf_t *uscf, bool down);


} /* namespace ngx_lua_upstream */


#endif /* _NGX_LUA_UPSTREAM_CORE_H_INCLUDED_ */
