
/*
 * The ngx.upstream functions of the health checker's passive checks
 * (upstream.watch_live_failures, upstream.take_live_failures): argument
 * checks and Lua tables here, the recording in ngx_lua_upstream_passive.cpp.
 * They raise Lua errors (luaL_*), so no frame here holds a lock or an object
 * with a destructor.
 */


#include "ngx_lua_upstream_lua.h"
#include "ngx_lua_upstream_passive.h"


namespace ngx_lua_upstream {

namespace {

/* LuaJIT's type tag of FFI cdata (lj_obj.h: LUA_TCDATA), not in lua.h */
constexpr int  lua_type_cdata = 10;

/* the statuses of arg 2: an array of integers 100 ... 999 */
void
check_statuses(lua_State *L, status_set_t *set)
{
    luaL_checktype(L, 2, LUA_TTABLE);

    size_t  n = lua_objlen(L, 2);

    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, static_cast<int>(i));

        lua_Number  v = lua_tonumber(L, -1);

        if (!lua_isnumber(L, -1) || v < 100 || v > 999
            || v != static_cast<lua_Number>(static_cast<int>(v)))
        {
            luaL_argerror(L, 2, "array of status codes expected");
        }

        status_add(set, static_cast<ngx_uint_t>(v));
        lua_pop(L, 1);
    }
}


/*
 * the semaphore of arg 3 (ngx.semaphore.new()): its `sem` field is a cdata
 * pointer, whose payload lua_topointer() gives for cdata
 */
ngx_http_lua_sema_s *
check_semaphore(lua_State *L)
{
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "sem");

    if (lua_type(L, -1) != lua_type_cdata) {
        luaL_argerror(L, 3, "ngx.semaphore expected");
    }

    auto  *sem = *static_cast<ngx_http_lua_sema_s *const *>(
                     lua_topointer(L, -1));

    lua_pop(L, 1);

    if (sem == nullptr) {
        luaL_argerror(L, 3, "ngx.semaphore expected");
    }

    return sem;
}


} /* namespace */


/* upstream.watch_live_failures(name, statuses, semaphore) */
int
lua_watch_live_failures(lua_State *L)
{
    if (lua_gettop(L) != 3) {
        return luaL_error(L, "exactly 3 arguments expected");
    }

    ngx_str_t                      group;
    ngx_http_upstream_srv_conf_t  *uscf = group_arg(L, &group);
    status_set_t                   statuses = {};

    check_statuses(L, &statuses);

    ngx_http_lua_sema_s  *wake = check_semaphore(L);

    if (uscf == nullptr) {
        return push_error(L, status_t::not_found);
    }

    return push_result(L, ngx_lua_upstream::watch_live_failures(
                              uscf, group, statuses, wake));
}


/*
 * failures, dropped = upstream.take_live_failures(): the failures are
 * cleared only once all are on the stack (a memory error keeps them)
 */
int
lua_take_live_failures(lua_State *L)
{
    if (lua_gettop(L) != 0) {
        return luaL_error(L, "no argument expected");
    }

    ngx_uint_t             n, dropped;
    const live_failure_t  *f = live_failures(&n, &dropped);

    lua_createtable(L, static_cast<int>(n), 0);

    for (ngx_uint_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 5);

        if (f[i].upstream != nullptr) {
            set_string(L, "upstream", *f[i].upstream);
        }

        lua_pushlstring(L, reinterpret_cast<const char *>(f[i].addr),
                        f[i].addr_len);
        lua_setfield(L, -2, "addr");
        set_integer(L, "status", static_cast<lua_Integer>(f[i].status));

        if (f[i].connect_failed) {
            set_true(L, "connect_failed");
        }

        if (f[i].no_header) {
            set_true(L, "no_header");
        }

        lua_rawseti(L, -2, static_cast<int>(i + 1));
    }

    lua_pushinteger(L, static_cast<lua_Integer>(dropped));
    clear_live_failures();
    return 2;
}


} /* namespace ngx_lua_upstream */
