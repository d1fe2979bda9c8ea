
/*
 * ngx_http_lua_upstream_module: the `ngx.upstream` Lua API
 * (contract: shared/spec/ngx-upstream.md).
 *
 * The Lua functions below raise errors with luaL_error()/luaL_check*(),
 * which longjmp out of them.  So no frame in this file holds an object with a
 * non-trivial destructor, and none holds a lock while calling the Lua API:
 * everything that locks lives in ngx_lua_upstream_core.cpp and returns
 * plain data (peer_snapshot_t, status_t) before any Lua call is made.
 */


#include "ngx_cpp_lua.h"
#include "ngx_lua_upstream_core.h"
#include "ngx_lua_upstream_passive.h"
#include "ngx_lua_upstream_lua.h"


/*
 * lua-nginx-module's request phases (ngx_http_lua_common.h of 0.10.23,
 * NGX_HTTP_LUA_CONTEXT_*), read through its exported FFI entry point
 * ngx_http_lua_ffi_get_phase() (what resty.core's ngx.get_phase() uses).
 * Timers, init_worker, exit_worker and the ssl_* phases run on a fake
 * request, which is "no request" for current_upstream_name().
 */
extern "C" int ngx_http_lua_ffi_get_phase(ngx_http_request_t *r, char **err);


namespace {


using namespace ngx_lua_upstream;


constexpr int  lua_context_request_phases =
      0x0001    /* set_by_lua */
    | 0x0002    /* rewrite_by_lua */
    | 0x0004    /* access_by_lua */
    | 0x0008    /* content_by_lua */
    | 0x0010    /* log_by_lua */
    | 0x0020    /* header_filter_by_lua */
    | 0x0040    /* body_filter_by_lua */
    | 0x0200    /* balancer_by_lua */
    | 0x8000;   /* server_rewrite_by_lua */


/* "host", or "host:port" when the group has a port */
void
push_group_name(lua_State *L, const ngx_http_upstream_srv_conf_t *uscf)
{
    push_str(L, uscf->host);

    if (uscf->port) {
        lua_pushfstring(L, ":%d", static_cast<int>(uscf->port));
        lua_concat(L, 2);
    }
}


/* the group named by the only argument, or NULL */
ngx_http_upstream_srv_conf_t *
check_group_arg(lua_State *L)
{
    if (lua_gettop(L) != 1) {
        luaL_error(L, "exactly one argument expected");
        return nullptr;         /* not reached */
    }

    ngx_str_t  name;

    return group_arg(L, &name);
}


/*
 * A snapshot of a peer list in a userdata pushed on the stack: measured,
 * then copied under the lock into exactly that much space; when DNS grew the
 * list in between, again (the list is rebuilt at most once per resolution,
 * so a few tries are plenty).  NULL after too many: "peers changed".
 */
constexpr int  snapshot_tries = 8;

struct list_snapshot_t {
    peer_snapshot_t  *peers;
    ngx_uint_t        n;
    ngx_uint_t        generation;
};

bool
take_snapshot(lua_State *L, ngx_http_upstream_rr_peers_t *peers,
    list_snapshot_t *out)
{
    for (int i = 0; i < snapshot_tries; i++) {
        list_size_t  size = measure(peers);
        size_t       len = snapshot_space_size(size);
        auto        *mem = static_cast<u_char *>(lua_newuserdata(L, len));

        snapshot_space_t  space;

        space.peers = reinterpret_cast<peer_snapshot_t *>(mem);
        space.max = size.peers;
        space.strings = mem + (size.peers ? size.peers : 1)
                              * sizeof(peer_snapshot_t);
        space.len = size.bytes;

        if (snapshot(peers, space, &out->n, &out->generation)) {
            out->peers = space.peers;
            return true;
        }

        lua_pop(L, 1);
    }

    return false;
}


/* ---- upstream.get_upstreams() ------------------------------------------ */

int
get_upstreams(lua_State *L)
{
    if (lua_gettop(L) != 0) {
        return luaL_error(L, "no argument expected");
    }

    ngx_http_upstream_main_conf_t  *umcf = main_conf();
    ngx_uint_t                      n = umcf ? umcf->upstreams.nelts : 0;

    lua_createtable(L, static_cast<int>(n), 0);

    if (n == 0) {
        return 1;
    }

    auto **uscfp = static_cast<ngx_http_upstream_srv_conf_t **>(
                       umcf->upstreams.elts);

    for (ngx_uint_t i = 0; i < n; i++) {
        push_group_name(L, uscfp[i]);
        lua_rawseti(L, -2, static_cast<int>(i + 1));
    }

    return 1;
}


/* ---- upstream.get_servers(name) ---------------------------------------- */

/* both lists of a dynamic group, for the addresses of its `resolve` lines */
struct group_snapshot_t {
    list_snapshot_t  list[2];       /* primary, backup */
};

/* the current addresses of a `resolve` line (peers of both lists: SRV puts
 * some in the backup list): a string when there is one, else an array */
void
push_resolved_addrs(lua_State *L, const group_snapshot_t &group,
    const void *line)
{
    ngx_uint_t  n = 0;

    for (const list_snapshot_t &list : group.list) {
        for (ngx_uint_t i = 0; i < list.n; i++) {
            n += (line != nullptr && list.peers[i].line == line);
        }
    }

    lua_createtable(L, static_cast<int>(n), 0);

    int  k = 0;

    for (const list_snapshot_t &list : group.list) {
        for (ngx_uint_t i = 0; i < list.n; i++) {
            if (line != nullptr && list.peers[i].line == line) {
                push_str(L, list.peers[i].name);
                lua_rawseti(L, -2, ++k);
            }
        }
    }

    if (k == 1) {
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
    }
}

void
push_server(lua_State *L, const ngx_http_upstream_server_t &server,
    const group_snapshot_t *group, const void *line)
{
    lua_createtable(L, 0, 7);

    if (server.host.len && group != nullptr) {
        push_resolved_addrs(L, *group, line);

    } else if (server.naddrs == 1) {
        push_str(L, server.addrs[0].name);

    } else {
        lua_createtable(L, static_cast<int>(server.naddrs), 0);

        for (ngx_uint_t i = 0; i < server.naddrs; i++) {
            push_str(L, server.addrs[i].name);
            lua_rawseti(L, -2, static_cast<int>(i + 1));
        }
    }

    lua_setfield(L, -2, "addr");

    if (server.name.len) {
        set_string(L, "name", server.name);
    }

#if (NGX_HTTP_UPSTREAM_ZONE)
    /* `server NAME resolve`: peers come and go with DNS at run time */
    if (server.host.len) {
        set_string(L, "host", server.host);
        set_true(L, "resolve");
    }

    if (server.service.len) {
        set_string(L, "service", server.service);
    }
#endif

    set_integer(L, "weight", static_cast<lua_Integer>(server.weight));
    set_integer(L, "max_fails", static_cast<lua_Integer>(server.max_fails));
    set_integer(L, "fail_timeout",
                static_cast<lua_Integer>(server.fail_timeout));

    if (server.backup) {
        set_true(L, "backup");
    }

    if (peer_failed(server.down)) {
        set_true(L, "down");
    }

    if (peer_draining(server.down)) {
        set_true(L, "drain");
    }
}


/*
 * An implicit group whose host is a name (proxy_pass http://name:port) has
 * no server list: nginx resolves the name into peers only when it sets up
 * round robin.  Report it as the single zeroed pseudo-server nginx itself
 * creates for an implicit group with a literal address, with the resolved
 * peer addresses.
 */
int
push_implicit_servers(lua_State *L, ngx_http_upstream_srv_conf_t *uscf)
{
    ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, false);

    if (peers == nullptr) {
        lua_createtable(L, 0, 0);
        return 1;
    }

    list_snapshot_t  snap;

    if (!take_snapshot(L, peers, &snap)) {
        return push_error(L, status_t::peers_changed);
    }

    lua_createtable(L, 1, 0);
    lua_createtable(L, 0, 4);

    if (snap.n == 1) {
        push_str(L, snap.peers[0].name);

    } else {
        lua_createtable(L, static_cast<int>(snap.n), 0);

        for (ngx_uint_t i = 0; i < snap.n; i++) {
            push_str(L, snap.peers[i].name);
            lua_rawseti(L, -2, static_cast<int>(i + 1));
        }
    }

    lua_setfield(L, -2, "addr");
    set_integer(L, "weight", 0);
    set_integer(L, "max_fails", 0);
    set_integer(L, "fail_timeout", 0);
    lua_rawseti(L, -2, 1);

    return 1;
}


/* snapshots of both lists of a dynamic group (pushed), false: changing */
bool
take_group_snapshot(lua_State *L, ngx_http_upstream_srv_conf_t *uscf,
    group_snapshot_t *group)
{
    for (int b = 0; b < 2; b++) {
        ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, b == 1);

        group->list[b].n = 0;

        if (peers != nullptr && !take_snapshot(L, peers, &group->list[b])) {
            return false;
        }
    }

    return true;
}


int
get_servers(lua_State *L)
{
    ngx_http_upstream_srv_conf_t  *uscf = check_group_arg(L);

    if (uscf == nullptr) {
        return push_error(L, status_t::not_found);
    }

    if (uscf->servers == nullptr) {
        return push_implicit_servers(L, uscf);
    }

    group_snapshot_t   group_data;
    group_snapshot_t  *group = nullptr;

    if (dynamic(uscf)) {
        if (!take_group_snapshot(L, uscf, &group_data)) {
            return push_error(L, status_t::peers_changed);
        }

        group = &group_data;
    }

    auto       *server = static_cast<ngx_http_upstream_server_t *>(
                             uscf->servers->elts);
    ngx_uint_t  n = uscf->servers->nelts;
    ngx_uint_t  resolve_lines[2] = { 0, 0 };    /* primary, backup */

    lua_createtable(L, static_cast<int>(n), 0);

    for (ngx_uint_t i = 0; i < n; i++) {
        const void  *line = nullptr;

        if (group != nullptr && server[i].host.len) {
            ngx_uint_t  &k = resolve_lines[server[i].backup ? 1 : 0];

            line = resolve_line(uscf, server[i].backup, k++);
        }

        push_server(L, server[i], group, line);
        lua_rawseti(L, -2, static_cast<int>(i + 1));
    }

    return 1;
}


/* ---- upstream.get_primary_peers(name), get_backup_peers(name) ---------- */

void
push_peer(lua_State *L, const peer_snapshot_t &peer, long long id)
{
    lua_createtable(L, 0, 13);

    set_integer(L, "id", static_cast<lua_Integer>(id));
    set_string(L, "name", peer.name);

    if (peer.server.len) {
        set_string(L, "server", peer.server);
    }

    set_integer(L, "weight", peer.weight);
    set_integer(L, "current_weight", peer.current_weight);
    set_integer(L, "effective_weight", peer.effective_weight);
    set_integer(L, "conns", static_cast<lua_Integer>(peer.conns));
    set_integer(L, "fails", static_cast<lua_Integer>(peer.fails));
    set_integer(L, "max_fails", static_cast<lua_Integer>(peer.max_fails));
    set_integer(L, "fail_timeout",
                static_cast<lua_Integer>(peer.fail_timeout));

    if (peer.accessed) {
        set_integer(L, "accessed", static_cast<lua_Integer>(peer.accessed));
    }

    if (peer.checked) {
        set_integer(L, "checked", static_cast<lua_Integer>(peer.checked));
    }

    if (peer_failed(peer.down)) {
        set_true(L, "down");
    }

    if (peer_draining(peer.down)) {
        set_true(L, "drain");
    }
}


int
get_peers(lua_State *L, bool backup)
{
    ngx_http_upstream_srv_conf_t  *uscf = check_group_arg(L);

    if (uscf == nullptr) {
        return push_error(L, status_t::not_found);
    }

    if (uscf->peer.data == nullptr) {
        return push_error(L, status_t::no_peer_data);
    }

    ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, backup);

    if (peers == nullptr) {
        lua_createtable(L, 0, 0);       /* no backup peers */
        return 1;
    }

    /* copy under the locks first, build Lua tables after unlocking */

    list_snapshot_t  snap;

    if (!take_snapshot(L, peers, &snap)) {
        return push_error(L, status_t::peers_changed);
    }

    lua_createtable(L, static_cast<int>(snap.n), 0);

    for (ngx_uint_t i = 0; i < snap.n; i++) {
        push_peer(L, snap.peers[i], peer_id(uscf, i, snap.generation));
        lua_rawseti(L, -2, static_cast<int>(i + 1));
    }

    return 1;
}


int
get_primary_peers(lua_State *L)
{
    return get_peers(L, false);
}


int
get_backup_peers(lua_State *L)
{
    return get_peers(L, true);
}


/* ---- upstream.set_peer_down(name, is_backup, peer_id, down) ------------ */

/*
 * The peer id argument: an integral number, else -1, which the core rejects
 * as "bad peer id" like any id out of range (luaL_checkinteger would
 * truncate 0.5 to peer 0).  A non-number still raises "bad argument #3".
 */
lua_Integer
peer_id_arg(lua_State *L, int idx)
{
    lua_Number  n = luaL_checknumber(L, idx);

    /* false for NaN too; the bounds keep the cast below defined */
    if (!(n >= 0 && n < 9007199254740992.0)) {    /* 2^53 */
        return -1;
    }

    lua_Integer  id = static_cast<lua_Integer>(n);

    return static_cast<lua_Number>(id) == n ? id : -1;
}


int
set_peer_down(lua_State *L)
{
    if (lua_gettop(L) != 4) {
        return luaL_error(L, "exactly 4 arguments expected");
    }

    ngx_str_t                      name;
    ngx_http_upstream_srv_conf_t  *uscf = group_arg(L, &name);
    bool                           backup = lua_toboolean(L, 2);
    lua_Integer                    id = peer_id_arg(L, 3);
    bool                           down = lua_toboolean(L, 4);

    if (uscf == nullptr) {
        return push_error(L, status_t::not_found);
    }

    return push_result(L, ngx_lua_upstream::set_peer_down(uscf, backup, id,
                                                          down));
}


/* ---- extensions for groups whose peers DNS changes ---------------------- */

/* upstream.set_peer_down_by_name(name, is_backup, peer_name, down) */
int
set_peer_down_by_name(lua_State *L)
{
    if (lua_gettop(L) != 4) {
        return luaL_error(L, "exactly 4 arguments expected");
    }

    ngx_str_t                      name;
    ngx_http_upstream_srv_conf_t  *uscf = group_arg(L, &name);
    bool                           backup = lua_toboolean(L, 2);
    size_t                         peer_len;
    const char                    *peer = luaL_checklstring(L, 3, &peer_len);
    bool                           down = lua_toboolean(L, 4);

    if (uscf == nullptr) {
        return push_error(L, status_t::not_found);
    }

    ngx_str_t  peer_name = {
        peer_len, reinterpret_cast<u_char *>(const_cast<char *>(peer))
    };

    return push_result(L, ngx_lua_upstream::set_peer_down_by_name(
                              uscf, backup, peer_name, down));
}


/* upstream.set_new_peers_down(name, down) */
int
set_new_peers_down(lua_State *L)
{
    if (lua_gettop(L) != 2) {
        return luaL_error(L, "exactly 2 arguments expected");
    }

    ngx_str_t                      name;
    ngx_http_upstream_srv_conf_t  *uscf = group_arg(L, &name);
    bool                           down = lua_toboolean(L, 2);

    if (uscf == nullptr) {
        return push_error(L, status_t::not_found);
    }

    return push_result(L, ngx_lua_upstream::set_new_peers_down(uscf, down));
}


/* upstream.get_peers_generation(name): changes whenever the peers do */
int
get_peers_generation(lua_State *L)
{
    ngx_http_upstream_srv_conf_t  *uscf = check_group_arg(L);

    if (uscf == nullptr) {
        return push_error(L, status_t::not_found);
    }

    if (uscf->peer.data == nullptr) {
        return push_error(L, status_t::no_peer_data);
    }

    lua_pushnumber(L, static_cast<lua_Number>(generation(uscf)));
    return 1;
}


/* ---- upstream.current_upstream_name() ---------------------------------- */

bool
in_request(ngx_http_request_t *r)
{
    char  *err = nullptr;
    int    phase = ngx_http_lua_ffi_get_phase(r, &err);

    return phase != NGX_ERROR && (phase & lua_context_request_phases);
}


int
current_upstream_name(lua_State *L)
{
    ngx_http_request_t  *r = ngx_http_lua_get_request(L);

    if (r == nullptr || !in_request(r)) {
        return luaL_error(L, "no request object found");
    }

    /*
     * u->upstream is the group once the upstream request has been set up;
     * a variable proxy_pass leaves it NULL unless the variable named a
     * configured group.
     */

    ngx_http_upstream_t  *u = r->upstream;

    if (u == nullptr || u->upstream == nullptr) {
        lua_pushnil(L);
        return 1;
    }

    push_group_name(L, u->upstream);
    return 1;
}


/* ---- require "ngx.upstream" -------------------------------------------- */

int
load_module(lua_State *L)
{
    static const luaL_Reg  functions[] = {
        { "get_upstreams", get_upstreams },
        { "get_servers", get_servers },
        { "get_primary_peers", get_primary_peers },
        { "get_backup_peers", get_backup_peers },
        { "set_peer_down", set_peer_down },
        { "set_peer_down_by_name", set_peer_down_by_name },
        { "set_new_peers_down", set_new_peers_down },
        { "get_peers_generation", get_peers_generation },
        { "watch_live_failures", lua_watch_live_failures },
        { "take_live_failures", lua_take_live_failures },
        { "current_upstream_name", current_upstream_name },
    };

    lua_createtable(L, 0, sizeof(functions) / sizeof(functions[0]));

    for (const luaL_Reg &f : functions) {
        lua_pushcfunction(L, f.func);
        lua_setfield(L, -2, f.name);
    }

    return 1;
}


/* ---- the nginx module -------------------------------------------------- */

ngx_int_t
ngx_http_lua_upstream_init(ngx_conf_t *cf)
{
    /*
     * HTTP modules come before lua-nginx-module (an HTTP_AUX_FILTER module)
     * in ngx_modules[], so this runs before it creates the Lua VM: the
     * preload hook is in place for init_by_lua* too, and again for every VM
     * it creates later (lua_code_cache off).
     */

    if (ngx_http_lua_add_package_preload(cf, "ngx.upstream", load_module)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * Live failures for the checker's passive checks: a no-op (one compare)
     * until a checker in this worker watches a group.
     */

    auto  *cmcf = static_cast<ngx_http_core_main_conf_t *>(
                      ngx_http_conf_get_module_main_conf(cf,
                                                         ngx_http_core_module));
    auto  *h = static_cast<ngx_http_handler_pt *>(
                   ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }

    *h = live_failures_log_handler;

    return NGX_OK;
}


void *
ngx_http_lua_upstream_create_main_conf(ngx_conf_t *cf)
{
    /* passive == NULL: no group watched (set in the workers, per cycle) */
    return ngx_pcalloc(cf->pool, sizeof(lua_upstream_main_conf_t));
}


ngx_http_module_t  ngx_http_lua_upstream_module_ctx = {
    nullptr,                            /* preconfiguration */
    ngx_http_lua_upstream_init,         /* postconfiguration */

    ngx_http_lua_upstream_create_main_conf,
                                        /* create main configuration */
    nullptr,                            /* init main configuration */

    nullptr,                            /* create server configuration */
    nullptr,                            /* merge server configuration */

    nullptr,                            /* create location configuration */
    nullptr                             /* merge location configuration */
};


} /* namespace */


extern "C" {

ngx_module_t  ngx_http_lua_upstream_module = {
    NGX_MODULE_V1,
    &ngx_http_lua_upstream_module_ctx,  /* module context */
    nullptr,                            /* module directives */
    NGX_HTTP_MODULE,                    /* module type */
    nullptr,                            /* init master */
    nullptr,                            /* init module */
    nullptr,                            /* init process */
    nullptr,                            /* init thread */
    nullptr,                            /* exit thread */
    nullptr,                            /* exit process */
    nullptr,                            /* exit master */
    NGX_MODULE_V1_PADDING
};

}
