/*
 * dlsym() for a static-pie nginx.
 *
 * LuaJIT resolves ffi.C.name with dlsym(RTLD_DEFAULT, name).  In a static
 * binary glibc's dlsym cannot see the program's own symbols (there is no
 * dynamic symbol table), so resty.core's ngx_http_lua_ffi_* calls and libc
 * functions declared with ffi.cdef would all fail.  The link is done twice
 * (build/nginx.sh): the second pass adds a generated, name-sorted table of
 * every global function and object of the first pass's binary
 * (np_static_symbols[]), and -Wl,--wrap=dlsym routes every dlsym call here.
 * Lookups in the default namespace bisect the table; anything else, or a
 * name not in the table, goes to the real dlsym.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>

typedef struct {
    const char  *name;
    void        *addr;
} np_static_symbol_t;

extern const np_static_symbol_t  np_static_symbols[];
extern const size_t              np_static_symbols_n;

void *__real_dlsym(void *handle, const char *name);
void *__wrap_dlsym(void *handle, const char *name);


static void *
np_static_lookup(const char *name)
{
    size_t  lo, hi, mid;
    int     rc;

    lo = 0;
    hi = np_static_symbols_n;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        rc = strcmp(name, np_static_symbols[mid].name);

        if (rc == 0) {
            return np_static_symbols[mid].addr;
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return NULL;
}


void *
__wrap_dlsym(void *handle, const char *name)
{
    void  *addr;

    if (handle == RTLD_DEFAULT && name != NULL) {
        addr = np_static_lookup(name);
        if (addr != NULL) {
            return addr;
        }
    }

    return __real_dlsym(handle, name);
}
