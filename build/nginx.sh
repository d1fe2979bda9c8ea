#!/usr/bin/env bash
# Configure and link the static-pie nginx with ngx_devel_kit, lua-nginx-module,
# LuaJIT and every module under modules/ compiled in.
#
#   NP_MODULES="a b"   only these modules/ (default: every modules/* with a config)
#   NP_PLAIN=1         a benchmark baseline (bench/compare/bench_startcost.py):
#                      the same nginx, patches, flags and libraries without
#                      ngx_devel_kit, lua-nginx-module and modules/ (one link,
#                      no dlsym table); needs NP_BUILD_DIR
#   (variant and build dir: build/common.sh)
# Run by build/build.sh after fetch.sh, deps.sh and lualib.sh.
#
# The nginx tree is configured with paths relative to .build/<variant>/nginx
# (../deps, ../modules), so `nginx -V` and the binary name no machine path.
# After configure, objs/Makefile is edited: the two `-Wl,-E` nginx and
# lua-nginx-module add are removed (with -static-pie they crash the binary
# before main), and the link gets $(NP_LINK_EXTRA) for the dlsym table
# (build/static-symbols).  Output: .build/<variant>/nginx/objs/nginx.
# Another NP_ARCH (build/arch.sh) is cross-compiled with $NP_CC; configure's
# test programs then run under qemu (build/cross-configure/).
. "$(dirname "$0")/common.sh"
. "$NP_ROOT/build/flags.sh"
np_target_flags

variant=$NP_VARIANT
B=$NP_B
plain=${NP_PLAIN:-}
[ -z "$plain" ] || [ -n "${NP_BUILD_DIR:-}" ] || np_die "NP_PLAIN=1 needs an NP_BUILD_DIR of its own"
mkdir -p "$B"
np_need_src nginx lua-nginx-module ngx_devel_kit
[ -f "$(np_depsdir)/.complete" ] || np_die "dependencies are not built: run build/build.sh"
[ -n "$plain" ] || [ -d "$NP_LUALIB_STAGE" ] || np_die "no staged lualib in $NP_LUALIB_STAGE: run build/build.sh"

# --- sources: fresh patched copies whenever the lock or our patches change ---
src_key=$( (for c in nginx lua-nginx-module ngx_devel_kit; do np_comp_key "$c"; done
          cat "$NP_ROOT"/build/patches/*/*.patch) | sha256sum | cut -c1-16)
if [ "$(cat "$B/.src-key" 2>/dev/null)" != "$src_key" ]; then
    np_log "preparing sources in $B"
    rm -rf "$B/nginx" "$B/lua-nginx-module" "$B/ngx_devel_kit" "$B/.configure-key"
    cp -a "$(np_srcdir nginx)" "$B/nginx"
    cp -a "$(np_srcdir lua-nginx-module)" "$B/lua-nginx-module"
    cp -a "$(np_srcdir ngx_devel_kit)" "$B/ngx_devel_kit"
    for comp in nginx lua-nginx-module ngx_devel_kit; do
        for p in "$NP_ROOT/build/patches/$comp"/*.patch; do
            [ -f "$p" ] || continue
            patch -s -p1 -d "$B/$comp" < "$p" || np_die "patch $p does not apply"
        done
    done
    echo "$src_key" > "$B/.src-key"
fi
ln -sfn "$(np_depsdir)" "$B/deps"
ln -sfn "$NP_ROOT/modules" "$B/modules"

# --- configure ---------------------------------------------------------------
# No -ffile-prefix-map here: nginx compiles relative paths already, and the
# flags would put machine paths into `nginx -V`.
cflags="$NP_HARDEN_CFLAGS ${NP_EXTRA_CFLAGS:-} -I../deps/include"
ldflags="-L../deps/lib $NP_LDFLAGS"
# DT_RELR (flags.sh) where the target's linker packs: binutils 2.40 (Debian 12)
# does on x86_64, while its aarch64 back end (2.41 adds it) only warns
# "-z pack-relative-relocs ignored".  Checked on a one-line program (does its
# dynamic section have a RELR table?) rather than by version, so a newer cross
# binutils gets it by itself.
relr_test=$(mktemp -d)
echo 'int x, *p = &x; int main(void) { return *p; }' > "$relr_test/t.c"
if ! { $NP_CC -fPIE -static-pie -Wl,-z,pack-relative-relocs "$relr_test/t.c" -o "$relr_test/t" \
           && readelf -dW "$relr_test/t" | grep -q '(RELR)'; } >/dev/null 2>&1; then
    np_log "the $NP_ARCH linker does not pack relative relocations: linking without -z pack-relative-relocs"
    ldflags=${ldflags/ -Wl,-z,pack-relative-relocs/}
fi
rm -rf "$relr_test"
if [ "$variant" = asan ]; then
    # Sanitizers need the dynamic runtime: this variant is for tests only.
    # Not checked: nginx core's deliberate memcpy(p, NULL, 0), unaligned loads
    # in its HTTP parser and lua-nginx-module's FFI tables, and the stale
    # pointer arithmetic when nginx moves a large header buffer
    # (nonnull-attribute, alignment, pointer-overflow).
    cflags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize=nonnull-attribute,alignment,pointer-overflow -I../deps/include"
    ldflags="-L../deps/lib -fsanitize=address,undefined"
fi

our_modules=()
# A folder without a config (modules/cxx, the shared C++ rule) is no module.
default_modules=$(cd "$NP_ROOT/modules" && for d in */; do [ -f "$d/config" ] && echo "${d%/}"; done)
[ -z "$plain" ] || default_modules=
for m in ${NP_MODULES-$default_modules}; do
    [ -f "$NP_ROOT/modules/$m/config" ] || np_die "modules/$m has no nginx config file"
    our_modules+=("--add-module=../modules/$m")
done
lua_modules=(--add-module=../ngx_devel_kit --add-module=../lua-nginx-module)
[ -z "$plain" ] || lua_modules=()

configure_args=(
    --prefix="${NP_TARGET_PREFIX:-/opt/nginx-portable}"
    --sbin-path=sbin/nginx
    --conf-path=conf/nginx.conf
    --error-log-path=logs/error.log
    --http-log-path=logs/access.log
    --pid-path=logs/nginx.pid
    --lock-path=logs/nginx.lock
    --http-client-body-temp-path=temp/client_body
    --http-proxy-temp-path=temp/proxy
    --http-fastcgi-temp-path=temp/fastcgi
    --http-uwsgi-temp-path=temp/uwsgi
    --http-scgi-temp-path=temp/scgi
    # nginx would pick the group from the *build* host's /etc/group.
    --user=nobody --group=nogroup
    --with-threads --with-file-aio
    --with-http_ssl_module --with-http_v2_module --with-http_realip_module
    --with-http_stub_status_module --with-http_gzip_static_module
    --with-stream --with-stream_ssl_module --with-stream_realip_module
    # HTTP/3 on OpenSSL 3.5's QUIC API.
    --with-http_v3_module
    # What nginx.org's packages build and carries no open CVE here.  Left out
    # (SECURITY.md): stream_ssl_preread, whose CVE-2026-123640 is not fixed in
    # 1.30.4; mail, mp4, dav, flv as before.  ssi and slice are back: 1.30.4
    # fixes CVE-2026-56434 and CVE-2026-60005.
    --with-http_auth_request_module --with-http_sub_module
    --with-http_secure_link_module --with-http_gunzip_module
    --with-http_addition_module --with-http_slice_module
    # PCRE2 (the static one in ../deps), JIT in nginx core and in ngx.re.
    --with-pcre --with-pcre-jit
    --with-cc-opt="$cflags"
    --with-ld-opt="$ldflags"
    "${lua_modules[@]}"
    "${our_modules[@]}"
)

# Cross: configure compiles and *runs* test programs (type sizes, endianness,
# malloc_trim): build/cross-configure/ puts a `cc` on PATH that compiles with
# the cross compiler and turns each objs/autotest into a qemu launcher, and a
# `uname -m` that names the target (configure picks alignment and cache-line
# size by it).  The answers are the target's own, not guesses.
configure_env=()
if [ -n "$NP_CROSS" ]; then
    command -v "$NP_QEMU" >/dev/null || np_die "$NP_QEMU is missing: run build/install-deps.sh build"
    configure_env=(PATH="$NP_ROOT/build/cross-configure:$PATH" CC=cc
                   NP_TARGET_CC="$NP_CC" NP_TARGET_MACHINE="$NP_ARCH"
                   # some test programs link dynamically: the cross libc's ld.so
                   NP_QEMU="$NP_QEMU -L /usr/$NP_TRIPLET")
fi

# The dependencies' key too: other libraries or headers (their flags, a lock
# change) mean a fresh configure, so every object and the link are redone.
conf_key=$( (printf '%s\n' "$NP_ARCH" "${configure_args[@]}" "$(basename "$(np_depsdir)")"
             cat "$0" "$NP_ROOT/modules/cxx/config.sh"
             for m in "${our_modules[@]}"; do cat "$NP_ROOT/modules/${m##*/}/config"; done) \
            | sha256sum | cut -c1-16)
cd "$B/nginx"
if [ "$(cat "$B/.configure-key" 2>/dev/null)" != "$conf_key" ] || [ ! -f objs/Makefile ]; then
    np_log "configuring nginx ($variant)"
    # A git tree of nginx has auto/configure (a release tarball: ./configure).
    configure=./configure; [ -f "$configure" ] || configure=auto/configure
    env "${configure_env[@]}" LUAJIT_LIB=../deps/lib LUAJIT_INC=../deps/include/luajit-2.1 \
        "$configure" "${configure_args[@]}" > "$B/configure.log" 2>&1 \
        || { tail -30 "$B/configure.log" >&2; np_die "nginx configure failed; see $B/configure.log"; }
    # See the header comment: no -Wl,-E, and a hook for the dlsym table.
    sed -i -e 's/[[:space:]]*-Wl,-E\b//g' -e 's/^\(\t\$(LINK) -o objs\/nginx\)/\1 $(NP_LINK_EXTRA)/' objs/Makefile
    grep -q 'NP_LINK_EXTRA' objs/Makefile || np_die "could not hook the link line in objs/Makefile"
    ! grep -q -- '-Wl,-E' objs/Makefile || np_die "-Wl,-E is still on the link line"
    echo "$conf_key" > "$B/.configure-key"
    rm -f objs/nginx
fi

# --- compile and link twice --------------------------------------------------
if [ -n "$plain" ]; then
    make -f objs/Makefile -j"$NP_JOBS" CC="$NP_CC -ffile-prefix-map=$B/nginx=." > "$B/make.log" 2>&1 \
        || { grep -E -A3 'error:|Error [0-9]' "$B/make.log" | head -40 >&2; np_die "nginx build failed; see $B/make.log"; }
    np_log "linked $B/nginx/objs/nginx (plain: no Lua, no modules/)"
    exit 0
fi
lualib_stage=$NP_LUALIB_STAGE
gen=$NP_ROOT/build/static-symbols/gen_symtab.py
cc_sym() { $NP_CC $cflags -ffile-prefix-map="$B/nginx"=. -ffile-prefix-map="$NP_ROOT"=. \
                -Wno-builtin-declaration-mismatch -c "$1" -o "$2"; }

cc_sym "$NP_ROOT/build/static-symbols/np_static_dlsym.c" objs/np_static_dlsym.o
# Pass 1: only the C names shipped Lua code declares (forced into the link).
mapfile -t ffi_names < <(python3 "$gen" --ffi-names "$lualib_stage")
python3 "$gen" --table objs/np_symtab_pass1.c "${ffi_names[@]}"
cc_sym objs/np_symtab_pass1.c objs/np_symtab_pass1.o

wrap="-Wl,--wrap=dlsym objs/np_static_dlsym.o"
# No libcrypt for the target (Debian has no cross libxcrypt): a crypt() that
# fails closed (the file says which auth_basic schemes still work).
if [ -n "$NP_CROSS" ] && [ ! -f "/usr/$NP_TRIPLET/lib/libcrypt.a" ]; then
    cc_sym "$NP_ROOT/build/static-symbols/np_crypt_unavailable.c" objs/np_crypt_unavailable.o
    wrap="$wrap objs/np_crypt_unavailable.o"
fi
# The build directory out of the debug info (and so out of the build-id),
# given to make rather than configure so `nginx -V` does not show it.
make_cc="$NP_CC -ffile-prefix-map=$B/nginx=."
if [ -f objs/np_symtab.o ] && make -q -f objs/Makefile objs/nginx 2>/dev/null \
   && [ "$(cat objs/np_ffi_names 2>/dev/null)" = "${ffi_names[*]}" ]; then
    np_log "nginx ($variant) is up to date"
    exit 0
fi
np_log "compiling nginx ($variant)"
rm -f objs/nginx
make -f objs/Makefile -j"$NP_JOBS" CC="$make_cc" NP_LINK_EXTRA="$wrap objs/np_symtab_pass1.o" \
    > "$B/make.log" 2>&1 || { grep -E -A3 'error:|Error [0-9]' "$B/make.log" | head -40 >&2; np_die "nginx build failed; see $B/make.log"; }

# Pass 2: every global function/object of pass 1; fail if Lua needs a missing one.
python3 "$gen" --table objs/np_symtab.c --from-binary objs/nginx --require "$lualib_stage" \
    || np_die "a Lua ffi.cdef name is not in the binary (add it to the link)"
cc_sym objs/np_symtab.c objs/np_symtab.o
rm -f objs/nginx
make -f objs/Makefile CC="$make_cc" NP_LINK_EXTRA="$wrap objs/np_symtab.o" >> "$B/make.log" 2>&1 \
    || np_die "nginx link (pass 2) failed; see $B/make.log"
echo "${ffi_names[*]}" > objs/np_ffi_names
np_log "linked $B/nginx/objs/nginx"
