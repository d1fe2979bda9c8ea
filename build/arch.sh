# The target architecture (sourced by common.sh, never run).
#   NP_ARCH=x86_64 (default, native build) | aarch64 (cross-built with Debian's
#   gcc-aarch64-linux-gnu and run under qemu-aarch64-static).
# Everything that differs between the architectures is decided here: the
# toolchain prefix, OpenSSL's target, the control-flow hardening flag and the
# emulator the tests run the binary with.  x86_64 keeps the names it always
# had (dist/nginx-portable, deps-<key>), so its cache stays warm.

NP_ARCH=${NP_ARCH:-x86_64}
case $NP_ARCH in
    x86_64)
        NP_TRIPLET=x86_64-linux-gnu
        NP_CROSS=                       # the host's own cc, strip, ...
        NP_OPENSSL_TARGET=linux-x86_64
        NP_CF_PROTECTION=-fcf-protection
        NP_QEMU= ;;
    aarch64)
        NP_TRIPLET=aarch64-linux-gnu
        NP_CROSS=aarch64-linux-gnu-
        NP_OPENSSL_TARGET=linux-aarch64
        # PAC return addresses + BTI landing pads: arm64's -fcf-protection.
        NP_CF_PROTECTION=-mbranch-protection=standard
        NP_QEMU=qemu-aarch64-static ;;
    *)  printf '[build] error: NP_ARCH must be x86_64 or aarch64, not %s\n' "$NP_ARCH" >&2; exit 1 ;;
esac
if [ -n "$NP_CROSS" ]; then NP_CC=${NP_CROSS}gcc; else NP_CC=cc; fi
NP_STRIP=${NP_CROSS}strip

# np_target_flags: after flags.sh, swap its x86 control-flow flag for the
# target's (flags.sh itself stays the x86_64 recipe: it is part of that
# architecture's dependency cache key).
np_target_flags() {
    NP_HARDEN_CFLAGS=${NP_HARDEN_CFLAGS/-fcf-protection/$NP_CF_PROTECTION}
    NP_CFLAGS=${NP_CFLAGS/-fcf-protection/$NP_CF_PROTECTION}
}
