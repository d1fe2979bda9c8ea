"""traffic-status: `nginx -t` refuses what cannot work (issue 13, case 8),
with the file and line."""
import re

import pytest

from conftest import conf_wrap, free_port


def conf(http_extra='', status_extra='', zone=True):
    return conf_wrap(f"""
    {'vhost_traffic_status_zone shared:vts:1m;' if zone else ''}
    {http_extra}
    server {{
        listen 127.0.0.1:{free_port()};
        location /status {{
            vhost_traffic_status_display;
            {status_extra}
        }}
    }}
""")


@pytest.mark.parametrize('text,message', [
    (conf(zone=False), '"vhost_traffic_status_display" needs "vhost_traffic_status_zone"'),
    (conf('vhost_traffic_status_filter_max_node 10;\n    vhost_traffic_status_filter_max_node 20;'),
     'filter_max_node without a prefix is duplicate'),
    (conf('vhost_traffic_status_filter_max_node 10 uri;\n    vhost_traffic_status_filter_max_node 20 uri;'),
     'filter_max_node prefix "uri" is duplicate'),
    (conf("vhost_traffic_status_dump '';"), '"vhost_traffic_status_dump" directive needs a file path'),
    (conf('vhost_traffic_status_dump /nonexistent-dir-h7/vts.db;'),
     'dump directory "/nonexistent-dir-h7" is not a directory'),
], ids=['display-without-zone', 'max-node-twice', 'max-node-prefix-twice', 'dump-empty', 'dump-missing-dir'])
def test_nginx_t_fails_with_file_and_line(nginx_factory, text, message):
    n = nginx_factory(text, start=False)
    r = n.test_config()
    assert r.returncode != 0, r.stderr
    assert message in r.stderr, r.stderr
    assert re.search(r'nginx\.conf:\d+', r.stderr), r.stderr


def test_zone_after_the_display_is_fine(nginx_factory):
    text = conf_wrap(f"""
    server {{
        listen 127.0.0.1:{free_port()};
        location /status {{ vhost_traffic_status_display; }}
    }}
    vhost_traffic_status_zone shared:vts:1m;
    vhost_traffic_status_filter_max_node 10 uri;
    vhost_traffic_status_filter_max_node 20 host;
""")
    r = nginx_factory(text, start=False).test_config()
    assert r.returncode == 0, r.stderr
