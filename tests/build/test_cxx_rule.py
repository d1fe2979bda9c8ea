"""Every C++ module gets the one C++ rule of modules/cxx, and takes nothing from libstdc++."""
import pathlib
import re
import subprocess

import pytest

from conftest import ROOT, IS_ASAN

MODULES = ROOT / 'modules'
CXX_MODULES = sorted(p.parent for p in MODULES.glob('*/config')
                     if any(p.parent.rglob('*.cpp')))


def objs_dir():
    variant = 'asan' if IS_ASAN else 'release'
    return ROOT / '.build' / variant / 'nginx' / 'objs'


@pytest.mark.parametrize('module', CXX_MODULES, ids=lambda p: p.name)
def test_module_config_sources_the_shared_rule(module):
    text = '\n'.join(l for l in (module / 'config').read_text().splitlines()
                     if not l.lstrip().startswith('#'))
    assert '. "$ngx_addon_dir/../cxx/config.sh"' in text
    assert 'ngx_module_libs="$ngx_cxx_libs"' in text
    assert 'cxx.specs' not in text and 'stdc++' not in text      # no rule of its own
    for src in module.rglob('*.cpp'):
        first = re.search(r'^#include\s+"([^"]+)"', src.read_text(), re.M)
        assert first, src


@pytest.mark.parametrize('module', CXX_MODULES, ids=lambda p: p.name)
def test_cpp_objects_reference_nothing_from_libstdcxx(module):
    # nginx puts addon objects at objs/addon/<source dir name>/<stem>.o
    stems = {src.stem for src in module.rglob('*.cpp')}
    mine = [o for o in (objs_dir() / 'addon').glob('**/*.o') if o.stem in stems]
    if not mine:
        pytest.skip('no objects of %s in %s (bundle built elsewhere)' % (module.name, objs_dir()))
    undefined = subprocess.run(['nm', '-u', *map(str, mine)], capture_output=True, text=True,
                               check=True).stdout
    bad = re.findall(r'\b(_Znw\w*|_Zdl\w*|__cxa_\w+|__gxx_personality\w*|_ZSt\w+|_ZNSt\w+|_ZTI\w+)',
                     undefined)
    assert not bad, sorted(set(bad))


def test_makefile_compiles_cpp_with_the_spec_file():
    makefile = objs_dir() / 'Makefile'
    if not makefile.exists():
        pytest.skip('no build tree at %s' % makefile)
    text = makefile.read_text()
    assert '-specs=../modules/cxx/cxx.specs' in text
    assert text.count('-specs=') == 1             # added once, whatever the number of modules
