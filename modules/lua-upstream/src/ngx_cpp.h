
/*
 * The C++ boundary of our nginx modules: nginx's (and lua-nginx-module's)
 * C headers behind extern "C", and compile-time proof of the flags the
 * module's config requests through cxx.specs (C++17, no exceptions, no RTTI).
 * Include this first, instead of <ngx_config.h>, in every .cpp file.
 */


#ifndef _NGX_CPP_H_INCLUDED_
#define _NGX_CPP_H_INCLUDED_


#if !defined(__cplusplus) || __cplusplus < 201703L
#error "our nginx modules are C++17"
#endif

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "compile without exceptions (-fno-exceptions, see cxx.specs)"
#endif

#if defined(__GXX_RTTI) || defined(__cpp_rtti)
#error "compile without RTTI (-fno-rtti, see cxx.specs)"
#endif


extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <lua.h>
#include <lauxlib.h>

#include <ngx_http_lua_api.h>
}


#endif /* _NGX_CPP_H_INCLUDED_ */
