"""traffic-status, issue 27 items 2-5 and issue 26 item 4: VTS v0.2.7's
behaviour where ours differed.

- a limit refuses once its counter is *over* the size (request:3 refuses
  the 5th request), not when it reaches it;
- $vts_* and set_by_filter give "not found" for an entry that does not
  exist yet (add_header sends nothing, Lua gets nil), not 0;
- the HTML page is `text/html` (no charset);
- a variable as the MEMBER:SIZE of limit_traffic is evaluated per request;
- with filter_by_host, a limit judges each Host by its own count (a Host
  without an entry is at 0), never by the server's shared zone."""
import pytest

from conftest import conf_wrap, free_port
from support.net import raw_request
from vts_util import dechunk, get, get_json, many_requests, req, status_of, statuses


def front(nginx_factory, http_extra='', server_extra='', zone='shared:vts:4m'):
    fport, sport = free_port(), free_port()
    nginx_factory(conf_wrap(f"""
    vhost_traffic_status_zone {zone};
    {http_extra}
    server {{
        listen 127.0.0.1:{fport};
        server_name a.test;
        {server_extra}
        # a Content-Length (not chunked): many_requests reads by it
        location / {{ content_by_lua_block {{
            ngx.header.content_length = 3 ngx.print("ok\\n") }} }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
"""), wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    return fport, sport


def headers_of(resp):
    head = resp.split(b'\r\n\r\n', 1)[0].decode('latin-1')
    return {k.strip().lower(): v.strip() for k, _, v in
            (line.partition(':') for line in head.split('\r\n')[1:])}


def body_of(resp):
    return dechunk(resp)[1].decode()


# issue 27 item 2 ---------------------------------------------------------

def test_limit_refuses_once_over_the_size(nginx_factory):
    fport, sport = front(nginx_factory, 'vhost_traffic_status_limit_traffic request:3;')
    # VTS: the 4th request sees 3 (not over 3) and passes; the 5th sees 4
    assert statuses(fport, '/', 6) == [200, 200, 200, 200, 503, 503]
    z = get_json(sport)['serverZones']['a.test']
    assert z['requestCounter'] == 6 and z['responses']['5xx'] == 2


def test_limit_by_set_key_refuses_once_over(nginx_factory):
    fport, sport = front(nginx_factory, '', '''
        vhost_traffic_status_filter_by_set_key $uri uris;
        location /f { vhost_traffic_status_limit_traffic_by_set_key FG@uris@/f request:2 429;
                      content_by_lua_block { ngx.say("f") } }''')
    assert statuses(fport, '/f', 5) == [200, 200, 200, 429, 429]


# issue 27 item 4 ---------------------------------------------------------

VARS = '''
        location /vars {
            add_header X-Req $vts_request_counter;
            add_header X-Time $vts_request_time;
            vhost_traffic_status_set_by_filter $stat server/$arg_z/requestCounter;
            vhost_traffic_status_set_by_filter $flt filter/uris@$arg_k/requestCounter;
            add_header X-Stat $stat;
            content_by_lua_block {
                ngx.say(type(ngx.var.stat), " ", type(ngx.var.flt), " ",
                        type(ngx.var.vts_request_counter))
            }
        }'''


def test_missing_entry_is_not_found(nginx_factory):
    fport, sport = front(nginx_factory, 'vhost_traffic_status_filter_by_host on;',
                         'vhost_traffic_status_filter_by_set_key $uri uris;' + VARS)
    # nothing counted yet: no zone for this Host, no entry for z or k
    resp = raw_request(fport, req('/vars?z=nosuch.test&k=/nope', host='new.test'))
    assert status_of(resp) == 200
    h = headers_of(resp)
    assert 'x-req' not in h and 'x-time' not in h and 'x-stat' not in h, h
    assert body_of(resp) == 'nil nil nil\n'
    # existing entries give their numbers (0 is a real count)
    for _ in range(3):
        raw_request(fport, req('/', host='h1.test'))
    resp = raw_request(fport, req('/vars?z=h1.test&k=/', host='h1.test'))
    h = headers_of(resp)
    assert h['x-req'] == '3' and h['x-stat'] == '3', h
    assert body_of(resp) == 'string string string\n'


def test_set_by_filter_not_found_in_a_string(nginx_factory):
    fport, sport = front(nginx_factory, '', '''
        location = /count {
            vhost_traffic_status_set_by_filter $c server/nosuch.test/requestCounter;
            return 200 "[$c]\\n";
        }''')
    assert body_of(raw_request(fport, req('/count', host='a.test'))) == '[]\n'


# issue 27 item 5 ---------------------------------------------------------

def test_html_content_type_is_text_html(nginx_factory):
    fport, sport = front(nginx_factory)
    st, head, _ = get(sport, '/status/format/html')
    assert st == 200
    ctype = [line.split(':', 1)[1].strip() for line in head.split('\r\n')
             if line.lower().startswith('content-type:')]
    assert ctype == ['text/html'], head


# issue 27 item 3 ---------------------------------------------------------

def test_limit_member_from_a_variable(nginx_factory):
    fport, sport = front(nginx_factory, '', '''
        vhost_traffic_status_limit_traffic $arg_m:3;
        location /b { vhost_traffic_status_limit_traffic_by_set_key NO@a.test $arg_m 429;
                      content_by_lua_block { ngx.say("b") } }''')
    assert statuses(fport, '/?m=request', 5) == [200, 200, 200, 200, 503]
    # a member that is not one (or empty) limits nothing
    assert statuses(fport, '/?m=bogus', 2) == [200, 200]
    assert statuses(fport, '/', 1) == [200]
    # evaluated per request: another member, another counter
    assert statuses(fport, '/?m=4xx', 1) == [200]
    # by_set_key: the whole MEMBER:SIZE from one variable
    assert statuses(fport, '/b?m=request:100', 1) == [200]
    assert statuses(fport, '/b?m=request:5', 1) == [429]


# issue 26 item 4 ---------------------------------------------------------

def test_per_host_limit_is_no_shared_budget(nginx_factory):
    fport, sport = front(nginx_factory, 'vhost_traffic_status_filter_by_host on;',
                         'vhost_traffic_status_limit_traffic request:100;', zone='shared:vts:8m')
    hosts = [b'h%04d.example' % i for i in range(3000)]
    reqs = [b'GET / HTTP/1.1\r\nHost: ' + h + b'\r\n\r\n' for h in hosts]
    for i in range(0, 3000, 500):      # first requests of new Hosts: each at 0
        part = reqs[i:i + 500]
        assert many_requests(fport, part) == len(part)
    doc = get_json(sport)
    refused = doc['serverZones']['*']['responses']['5xx']
    assert refused == 0, refused          # main: 1,876 (1,124 passed)
    # beyond the 1,024 Host cap the requests are counted in a.test's zone ...
    assert doc['serverZones']['*']['requestCounter'] == 3000
    assert doc['serverZones']['a.test']['requestCounter'] == 3000 - 1024
    # ... which is no budget of any Host: a never-seen Host passes
    assert statuses(fport, '/', 1, host='never-seen.example') == [200]
    # a Host with its own entry is limited by its own count
    assert statuses(fport, '/', 101, host='h0001.example')[-2:] == [200, 503]
