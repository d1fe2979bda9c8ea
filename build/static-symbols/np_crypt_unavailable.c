/*
 * crypt() for a target without libcrypt (build/nginx.sh links this only then:
 * Debian ships no cross libxcrypt for aarch64).  auth_basic keeps nginx's own
 * schemes ($apr1$, {SHA}, {SSHA}, {PLAIN}, src/core/ngx_crypt.c); the libc
 * ones ($5$, $6$, $y$, $2b$) fail closed: nginx logs "crypt() failed" and
 * answers 500, never lets the request through.
 */
#include <errno.h>
#include <stddef.h>

char *crypt(const char *key, const char *salt);

char *
crypt(const char *key, const char *salt)
{
    (void) key;
    (void) salt;
    errno = ENOSYS;
    return NULL;
}
