
/*
 * ngx_cpp.h plus the C headers of LuaJIT and lua-nginx-module's public API,
 * for modules that expose a Lua binding.
 */


#ifndef _NGX_CPP_LUA_H_INCLUDED_
#define _NGX_CPP_LUA_H_INCLUDED_


#include "ngx_cpp.h"

extern "C" {
#include <lua.h>
#include <lauxlib.h>

#include <ngx_http_lua_api.h>
}


#endif /* _NGX_CPP_LUA_H_INCLUDED_ */
