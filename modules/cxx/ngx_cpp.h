
/*
 * The C++ boundary of our nginx modules: nginx's C headers behind
 * extern "C", and compile-time proof of the flags modules/cxx/config.sh
 * requests through cxx.specs (C++17, no exceptions, no RTTI).
 * Include this first, instead of <ngx_config.h>, in every .cpp file;
 * modules that talk to Lua include ngx_cpp_lua.h instead.
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
}


#endif /* _NGX_CPP_H_INCLUDED_ */
