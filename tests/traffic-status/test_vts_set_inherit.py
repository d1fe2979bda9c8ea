"""traffic-status: set_by_filter definitions are inherited (issue 13, case 7):
a location's own `vhost_traffic_status_set_by_filter` adds to the server's,
also inside `if`."""
from conftest import conf_wrap, free_port
from support.net import raw_request
from vts_util import req


def test_set_by_filter_merges_inherited_definitions(nginx_factory):
    fport = free_port()
    nginx_factory(conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:1m;
    vhost_traffic_status_set_by_filter $h server/counted.test/requestCounter;
    server {{
        listen 127.0.0.1:{fport};
        server_name counted.test;
        vhost_traffic_status_set_by_filter $a server/counted.test/requestCounter;
        location / {{ return 200 "ok\\n"; }}
        location /own {{
            vhost_traffic_status_set_by_filter $b server/counted.test/2xx;
            return 200 "h=$h a=$a b=$b\\n";
        }}
        location /cond {{
            vhost_traffic_status_set_by_filter $b server/counted.test/2xx;
            if ($arg_x) {{
                vhost_traffic_status_set_by_filter $c server/counted.test/requestCounter;
                return 200 "h=$h a=$a b=$b c=$c\\n";
            }}
            return 200 "none\\n";
        }}
        location /override {{
            vhost_traffic_status_set_by_filter $a server/counted.test/4xx;
            return 200 "a=$a\\n";
        }}
    }}
"""), wait_ports=[('127.0.0.1', fport)])
    for _ in range(3):
        raw_request(fport, req('/'))
    body = lambda path: raw_request(fport, req(path)).split(b'\r\n\r\n', 1)[1].decode()
    assert body('/own') == 'h=3 a=3 b=3\n'
    assert body('/cond?x=1') == 'h=4 a=4 b=4 c=4\n'
    assert body('/override') == 'a=0\n'
