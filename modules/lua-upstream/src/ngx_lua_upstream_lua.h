
/*
 * The ngx.upstream binding's small Lua helpers (they may raise Lua memory
 * errors: nothing to unwind), and the live-failure functions of
 * ngx_http_lua_upstream_live.cpp.  Binding side only: nothing here locks.
 */


#ifndef _NGX_LUA_UPSTREAM_LUA_H_INCLUDED_
#define _NGX_LUA_UPSTREAM_LUA_H_INCLUDED_


#include "ngx_cpp_lua.h"
#include "ngx_lua_upstream_core.h"


namespace ngx_lua_upstream {

inline int
push_error(lua_State *L, status_t s)
{
    lua_pushnil(L);
    lua_pushstring(L, status_text(s));
    return 2;
}


/* nil, err when s is an error, else true */
inline int
push_result(lua_State *L, status_t s)
{
    if (s != status_t::ok) {
        return push_error(L, s);
    }

    lua_pushboolean(L, 1);
    return 1;
}


/*
 * the group named by argument 1 (a string, else a Lua error), or nullptr;
 * *name is that name, Lua's string (valid while it is on the stack)
 */
inline ngx_http_upstream_srv_conf_t *
group_arg(lua_State *L, ngx_str_t *name)
{
    const char  *s = luaL_checklstring(L, 1, &name->len);

    name->data = reinterpret_cast<u_char *>(const_cast<char *>(s));

    return find(main_conf(), name->data, name->len);
}


inline void
push_str(lua_State *L, const ngx_str_t &s)
{
    lua_pushlstring(L, reinterpret_cast<const char *>(s.data), s.len);
}


inline void
set_integer(lua_State *L, const char *key, lua_Integer value)
{
    lua_pushinteger(L, value);
    lua_setfield(L, -2, key);
}


inline void
set_string(lua_State *L, const char *key, const ngx_str_t &value)
{
    push_str(L, value);
    lua_setfield(L, -2, key);
}


inline void
set_true(lua_State *L, const char *key)
{
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, key);
}


/* upstream.watch_live_failures(name, statuses, semaphore) */
int lua_watch_live_failures(lua_State *L);

/* failures, dropped = upstream.take_live_failures() */
int lua_take_live_failures(lua_State *L);

} /* namespace ngx_lua_upstream */


#endif /* _NGX_LUA_UPSTREAM_LUA_H_INCLUDED_ */
