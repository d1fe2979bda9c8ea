# The one C++ rule of our nginx modules, sourced by each module's `config`
# right after it sets ngx_addon_dir (so a module built alone gets it too):
#
#   . "$ngx_addon_dir/../cxx/config.sh"
#   ngx_module_incs="... $ngx_cxx_incs"
#   ngx_module_deps="... $ngx_cxx_deps"
#   ngx_module_libs="$ngx_cxx_libs"
#
# nginx's auto/make compiles addon sources ending in .cpp with $(CC) and the
# same $(CFLAGS) as C; gcc picks C++ (cc1plus) by the extension.  C++-only
# flags (-fno-rtti, -std=c++17, ...) would make every C compile fail under
# -Werror ("valid for C++ but not for C"), so they live in a gcc spec file
# that only amends the cc1plus command line; -specs= itself is harmless for C.
# ngx_cpp.h fails the build if the flags did not reach the compiler.

ngx_cxx_dir=${ngx_addon_dir%/*}/cxx

case " $CFLAGS " in
    *" -specs=$ngx_cxx_dir/cxx.specs "*) ;;
    *) CFLAGS="$CFLAGS -specs=$ngx_cxx_dir/cxx.specs" ;;
esac

ngx_cxx_incs=$ngx_cxx_dir
ngx_cxx_deps="$ngx_cxx_dir/ngx_cpp.h $ngx_cxx_dir/ngx_cpp_lua.h $ngx_cxx_dir/cxx.specs"
# libstdc++ by file name: the static archive in every variant, also in the
# dynamically linked sanitizer build.  With -fno-exceptions/-fno-rtti and no
# operator new our modules reference nothing from it (tests/build checks nm).
ngx_cxx_libs="-l:libstdc++.a"
