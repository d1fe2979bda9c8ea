
/*
 * Live failures of proxied requests, recognised in C (issue 29): the
 * health checker's `passive` option registers a group's failing statuses
 * here (upstream.watch_live_failures), a log-phase handler compares every
 * attempt of a request ($upstream_status and friends, r->upstream_states)
 * with them and records the failed ones in a small per-worker buffer, and
 * the checker's Lua drains it (upstream.take_live_failures) when woken.  A
 * request that did not fail costs a handful of compares and runs no Lua.
 *
 * Per worker and per cycle: the registry hangs off this module's main conf,
 * so a reload starts empty.  Nothing here calls the Lua API or takes a lock
 * (the memory is the worker's own); waking the Lua side is lua-nginx-module's
 * semaphore post, plain C that only posts an event.
 */


#ifndef _NGX_LUA_UPSTREAM_PASSIVE_H_INCLUDED_
#define _NGX_LUA_UPSTREAM_PASSIVE_H_INCLUDED_


#include "ngx_cpp.h"
#include "ngx_lua_upstream_core.h"

#include <cstdint>
#include <type_traits>


/* lua-nginx-module's semaphore (ngx_http_lua_semaphore.h), opaque here */
extern "C" {
struct ngx_http_lua_sema_s;
}


namespace ngx_lua_upstream {


/* HTTP status codes 0 ... 1023, one bit each */
struct status_set_t {
    uint64_t  bits[16];
};

inline bool
status_in(const status_set_t &set, ngx_uint_t status)
{
    return status < 1024 && (set.bits[status >> 6] >> (status & 63)) & 1;
}

inline void
status_add(status_set_t *set, ngx_uint_t status)
{
    set->bits[status >> 6] |= uint64_t(1) << (status & 63);
}


/* how many failures the buffer holds between two drains (more are dropped) */
constexpr ngx_uint_t  live_failures_max = 128;

/* one failed attempt of a proxied request */
struct live_failure_t {
    const ngx_str_t  *upstream;        /* the group's name as watched, or
                                          NULL: find the peer by address */
    ngx_uint_t        status;          /* 0 when there was none ("-") */
    bool              connect_failed;  /* $upstream_connect_time "-" */
    bool              no_header;       /* $upstream_header_time "-" */
    size_t            addr_len;
    u_char            addr[NGX_SOCKADDR_STRLEN];   /* "ip:port" */
};

static_assert(std::is_trivially_copyable_v<live_failure_t>);


/* this module's main conf: NULL until a checker watches a group */
struct passive_t;

struct lua_upstream_main_conf_t {
    passive_t  *passive;
};


/*
 * Watch the group: an attempt fails when its status is in `statuses`, when
 * its connection failed, or when no header came with nginx's 502/504.  A
 * record of a failure posts `wake` (once until the next take).  `name` is
 * copied; a second call for the group replaces the first.
 */
status_t watch_live_failures(ngx_http_upstream_srv_conf_t *uscf,
    const ngx_str_t &name, const status_set_t &statuses,
    ngx_http_lua_sema_s *wake);

/* the failures recorded since the last clear, and how many were dropped */
const live_failure_t *live_failures(ngx_uint_t *n, ngx_uint_t *dropped);

/* forget them: the next failure posts the semaphore again */
void clear_live_failures();

/* NGX_HTTP_LOG_PHASE */
ngx_int_t live_failures_log_handler(ngx_http_request_t *r);


} /* namespace ngx_lua_upstream */


extern "C" {
extern ngx_module_t  ngx_http_lua_upstream_module;
}


#endif /* _NGX_LUA_UPSTREAM_PASSIVE_H_INCLUDED_ */
