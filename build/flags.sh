# Compiler and linker flags shared by the dependency builds and nginx.
# Sourced after common.sh.  Hardening per ../shared/notes/static-build.md §2.6.
# No machine paths here: they would end up in the binary (OpenSSL records its
# flags) and in `nginx -V`; deps.sh and nginx.sh keep paths out otherwise.

SOURCE_DATE_EPOCH=$(np_source_date_epoch)
export SOURCE_DATE_EPOCH

NP_HARDEN_CFLAGS="-O2 -fPIE -fstack-protector-strong -fstack-clash-protection -fcf-protection -D_FORTIFY_SOURCE=2 -Wformat -Werror=format-security"
NP_CFLAGS="$NP_HARDEN_CFLAGS ${NP_EXTRA_CFLAGS:-}"
# OpenSSL, PCRE2 and zlib are built without unwind tables (-0.7 MB of
# .eh_frame and its index; issue 29's size goal): nothing unwinds through
# their frames.  C++ code is built without exceptions, and LuaJIT's error
# unwinding stops at the lua_pcall/lua_resume that runs the Lua code (a
# callback of OpenSSL's, such as ssl_certificate_by_lua, runs its Lua that
# way), so it never walks into these libraries.  The price: a debugger or
# profiler gets no backtrace through them in the stripped binary.
NP_NO_UNWIND_CFLAGS="-fno-asynchronous-unwind-tables -fno-unwind-tables"
# -z pack-relative-relocs: DT_RELR (binutils >= 2.38, glibc >= 2.36, whose
# static-pie self-relocator applies it).  The ~57,000 R_*_RELATIVE entries of
# .rela.dyn (24 bytes each, 1.37 MB on x86_64) become a ~14 KB bitmap; the
# few IRELATIVE ones stay in .rela.dyn.  A test checks the dynamic section.
NP_LDFLAGS="-static-pie -Wl,-z,relro,-z,now -Wl,-z,noexecstack -Wl,-z,pack-relative-relocs -Wl,--build-id=sha1 ${NP_EXTRA_LDFLAGS:-}"
