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
 * Lookups in the default namespace search the table; anything else, or a
 * name not in the table, goes to the real dlsym.
 *
 * The table (gen_symtab.py says how it is laid out) is read-only data with
 * no relocation: 32-bit offsets to the symbols, and the sorted names
 * front-coded in blocks whose first names are bisected.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

extern const size_t         np_static_symbols_n;
extern const size_t         np_static_symbols_block;
extern const uint32_t       np_static_blocks[];
extern const unsigned char  np_static_names[];
extern const int32_t        np_static_addrs[];

void *__real_dlsym(void *handle, const char *name);
void *__wrap_dlsym(void *handle, const char *name);


static void *
np_static_addr(size_t i)
{
    return (void *) ((uintptr_t) np_static_addrs + (intptr_t) np_static_addrs[i]);
}


static void *
np_static_lookup(const char *name)
{
    size_t                lo, hi, mid, i, end, m, k;
    int                   rc;
    const unsigned char  *p;

    /* the last block whose first name is <= name */

    lo = 0;
    hi = (np_static_symbols_n + np_static_symbols_block - 1)
         / np_static_symbols_block;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        rc = strcmp(name, (const char *) np_static_names + np_static_blocks[mid] + 1);

        if (rc == 0) {
            return np_static_addr(mid * np_static_symbols_block);
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    if (lo == 0) {
        return NULL;
    }

    /*
     * Scan the block.  m: how many leading bytes name shares with the entry
     * before (which sorts before name).  An entry sharing k bytes with that
     * one: k > m, it still sorts before name; k < m, it sorts after name (it
     * differs from the one before at byte k, upwards, where name does not);
     * k == m, compare the rest.
     */

    i = (lo - 1) * np_static_symbols_block;
    end = i + np_static_symbols_block;
    if (end > np_static_symbols_n) {
        end = np_static_symbols_n;
    }

    p = np_static_names + np_static_blocks[lo - 1] + 1;
    for (m = 0; p[m] != '\0' && p[m] == (unsigned char) name[m]; m++) { /* void */ }
    p += strlen((const char *) p) + 1;

    for (i++; i < end; i++) {
        k = *p++;

        if (k == m) {
            while (*p != '\0' && *p == (unsigned char) name[m]) {
                p++;
                m++;
            }

            if (*p == '\0' && name[m] == '\0') {
                return np_static_addr(i);
            }

            if (*p > (unsigned char) name[m]) {
                return NULL;
            }

        } else if (k < m) {
            return NULL;
        }

        p += strlen((const char *) p) + 1;
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
