"""The pinned versions, read from build/deps.lock (tests never write a version out)."""
from support.bundle import ROOT


def locked_versions():
    """{component: upstream version} of every `component NAME VERSION LICENSE` line."""
    out = {}
    for line in (ROOT / 'build' / 'deps.lock').read_text().splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == 'component':
            out[f[1]] = f[2]
    return out


def locked_version(component):
    return locked_versions()[component]


def ngx_lua_version():
    """ngx.config.ngx_lua_version of the pinned lua-nginx-module: 0.10.30rc2 -> 10030."""
    major, minor, patch = locked_version('lua-nginx-module').split('.')[:3]
    return int(major) * 1000000 + int(minor) * 1000 + int(patch.split('rc')[0])
