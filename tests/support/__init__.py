"""The tests' shared kit: nginx processes from the bundle (bundle), loopback
sockets and HTTP (net), backends (backends), a test CA (pki), checks of what
nginx outputs (probes), nginx.conf snippets (confs) and private namespaces
(namespaces).  tests/conftest.py registers the fixtures defined here."""
