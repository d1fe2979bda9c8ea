"""The pytest entry: registers the shared fixtures of tests/support and
re-exports its most used helpers, so a test may say `from conftest import ...`.

Every test gets its own prefix directory (conf/, logs/, temp/ and links to the
bundle's sbin/ and lualib/), so tests never share state.  `nginx_factory`
returns started `Nginx` objects and, at teardown, stops them and fails the
test if the error log shows a crash or a sanitizer report.  `backends` and
`blackhole` make loopback backends (support/backends.py).
"""
from support.backends import backends, blackhole
from support.bundle import (BUNDLE, CRASH_MARKERS, IS_ASAN, ROOT, Nginx, _traversable_test_tmp,
                            _traversable_tmp, copy_bundle, make_prefix, nginx_factory)
from support.confs import conf_wrap
from support.net import free_port, http_get, port_open, wait_for

__all__ = [
    # fixtures: pytest finds them by name in this module
    'backends', 'blackhole', 'nginx_factory', '_traversable_tmp', '_traversable_test_tmp',
    # helpers used across the folders
    'BUNDLE', 'CRASH_MARKERS', 'IS_ASAN', 'ROOT', 'Nginx', 'copy_bundle', 'make_prefix',
    'conf_wrap', 'free_port', 'http_get', 'port_open', 'wait_for',
]
