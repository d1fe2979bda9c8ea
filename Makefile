# Convenience wrappers; the real steps are the scripts in build/ and tests/.
.PHONY: all bundle bundle-arm64 run stop test asan test-asan test-arm64 test-stress bench bench-report clean

PREFIX_DIR := $(CURDIR)/dist/nginx-portable

all: bundle

bundle:
	bash build/build.sh

# The same bundle for aarch64, cross-built (dist/nginx-portable-aarch64 and
# its tarball; build/arch.sh).
bundle-arm64:
	NP_ARCH=aarch64 bash build/build.sh

run:
	bash build/run.sh

stop:
	-$(PREFIX_DIR)/sbin/nginx -p $(PREFIX_DIR) -s quit

test:
	bash tests/run.sh

# ASan+UBSan build of the same sources (tests only, never released).
asan:
	NP_VARIANT=asan bash build/build.sh

# The integration suites under ASan+UBSan (release-binary, reproducibility and
# soak tests are for the release build).
ASAN_SUITES := tests/build tests/upstream tests/traffic-status tests/healthcheck tests/runtime tests/fuzz

test-asan: asan
	NP_BUNDLE=$(CURDIR)/.build/asan/bundle bash tests/run.sh $(ASAN_SUITES)

# The aarch64 bundle's tests, every nginx run under qemu-aarch64-static.
test-arm64:
	NP_ARCH=aarch64 bash tests/run.sh tests/arm64

# Both tiers with the CPU contended (a niced busy loop per core): what a busy
# CI machine does to timing (tests/stress.sh).
test-stress:
	bash tests/stress.sh
	NP_STRESS_TIER=asan bash tests/stress.sh

# Both architectures' tarballs, OCI images (+ one multi-platform index), SBOMs
# and SHA256SUMS in dist/ (release/README.md).
.PHONY: release
release:
	bash release/release.sh

bench: bundle
	bash bench/run.sh

# Regenerate bench/RESULTS.md (every figure a ratio against a same-run baseline).
bench-report: bundle
	bash build/install-deps.sh
	NP_BUNDLE=$(CURDIR)/dist/nginx-portable /usr/bin/python3 bench/report.py

clean:
	rm -rf .build dist
