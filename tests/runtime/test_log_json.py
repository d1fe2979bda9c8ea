"""conf/log-json.conf: every access-log line is one JSON object with the
documented fields, also for hostile requests (quotes, backslashes, control
bytes, invalid UTF-8 in the request line and headers, HTTP/0.9, garbage)."""
import base64
import codecs
import shutil
import socket

import pytest

from conftest import BUNDLE, conf_wrap, free_port, http_get, wait_for
from support.probes import parse_json

FIELDS = {'time', 'request_id', 'remote_addr', 'remote_user', 'host', 'request', 'method', 'uri',
          'protocol', 'status', 'body_bytes_sent', 'request_length', 'request_time', 'referer',
          'user_agent', 'x_forwarded_for', 'upstream_addr', 'upstream_status', 'upstream_response_time'}
NUMBERS = {'status', 'body_bytes_sent', 'request_length', 'request_time'}


def _hex_bytes(err):
    return ''.join('\\x%02X' % b for b in err.object[err.start:err.end]), err.end


codecs.register_error('np_log_json_hex', _hex_bytes)


def logged(raw):
    """What the log's text for raw client bytes is: valid UTF-8 kept, every
    other byte written as the four characters \\xHH."""
    return raw.decode('utf-8', 'np_log_json_hex')


@pytest.fixture
def json_log(nginx_factory):
    port, backend = free_port(), free_port()
    body = '''
    include log-json.conf;
    upstream be { server 127.0.0.1:%d; }
    server {
        listen 127.0.0.1:%d;
        access_log logs/access.log json;
        location /proxy/ { proxy_pass http://be/; }
        location = /odd { return 9; }               # $status "009"
        location / { return 200 "ok\\n"; }
    }
    server { listen 127.0.0.1:%d; location / { return 204; } }
    ''' % (backend, port, backend)
    n = nginx_factory(conf_wrap(body), start=False)
    shutil.copy(BUNDLE / 'conf' / 'log-json.conf', n.prefix / 'conf' / 'log-json.conf')
    n.start(wait_ports=[('127.0.0.1', port)])
    log = n.prefix / 'logs' / 'access.log'

    def lines(count):
        wait_for(lambda: log.exists() and log.read_bytes().count(b'\n') >= count,
                 what='%d access log lines' % count)
        return [parse_json(line) for line in log.read_bytes().splitlines()]  # strict UTF-8
    return n, port, lines


def raw_request(port, data):
    """Send bytes as they are; read until nginx closes (or answers)."""
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b''
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_each_line_is_json_with_the_fields(json_log):
    n, port, lines = json_log
    assert http_get('127.0.0.1', port, '/plain?x=1', headers={'User-Agent': 'ua/1', 'Referer': 'http://r/'})[0] == 200
    assert http_get('127.0.0.1', port, '/proxy/up', headers={'X-Forwarded-For': '192.0.2.1'})[0] == 204
    plain, proxied = lines(2)
    for entry in (plain, proxied):
        assert set(entry) == FIELDS, entry
        assert all(isinstance(entry[k], (int, float)) for k in NUMBERS), entry
        assert entry['remote_addr'] == '127.0.0.1' and entry['protocol'] == 'HTTP/1.1'
        assert len(entry['request_id']) == 32 and entry['time'][:2] == '20'
    assert (plain['status'], plain['method'], plain['uri']) == (200, 'GET', '/plain?x=1')
    assert plain['request'] == 'GET /plain?x=1 HTTP/1.1' and plain['body_bytes_sent'] == 3
    assert (plain['user_agent'], plain['referer'], plain['upstream_addr']) == ('ua/1', 'http://r/', '')
    assert proxied['status'] == 204 and proxied['upstream_status'] == '204'
    assert proxied['upstream_addr'].startswith('127.0.0.1:') and proxied['x_forwarded_for'] == '192.0.2.1'
    float(proxied['upstream_response_time'])


HOSTILE_UA = (b'q"uote \\back\\slash \x01\x07\x1b\x7f caf\xc3\xa9 \xf0\x9f\x98\x80 '
              b'bad:\xff\xfe over:\xc0\xaf surr:\xed\xa0\x80 cut:\xe2\x82 end')
HOSTILE_URI = b'/caf\xc3\xa9/\xff\xfe?q=%22"\\x\xc3(&u=\xf4\x90\x80\x80'


def test_hostile_requests_still_give_valid_json(json_log):
    n, port, lines = json_log
    user = b'\xffroot"\\'
    auth = base64.b64encode(user + b':pw')
    requests = [
        b'GET ' + HOSTILE_URI + b' HTTP/1.1\r\nHost: h\r\nUser-Agent: ' + HOSTILE_UA
        + b'\r\nReferer: \xe9t\xe9\x1b[31m\r\nX-Forwarded-For: 1.2.3.4, "\xfa"\r\nAuthorization: Basic '
        + auth + b'\r\nConnection: close\r\n\r\n',
        b'GET /ctl\x01\x1f HTTP/1.1\r\nHost: h\r\n\r\n',             # control bytes: 400
        b'GET /nine\r\n',                                             # HTTP/0.9
        b'GET /odd HTTP/1.0\r\n\r\n',                                # status "009": a number 9
        b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff"\\\r\n\r\n',   # TLS on a plain port
        b'G\xffT / HTTP/1.1\r\nHost: h\r\n\r\n',
        # nginx 1.29.4+ refuses such a Host at once (400): User-Agent first
        b'GET / HTTP/1.1\r\nUser-Agent: \xc3\r\nHost: \xff\xfe.example\r\n\r\n',
    ]
    for data in requests:
        raw_request(port, data)
    entries = lines(len(requests))
    assert len(entries) == len(requests)
    for entry in entries:
        assert set(entry) == FIELDS, entry
        assert all(isinstance(entry[k], (int, float)) for k in NUMBERS), entry
    first = entries[0]
    assert first['status'] == 200
    assert first['user_agent'] == logged(HOSTILE_UA)
    assert 'café 😀' in first['user_agent'] and 'bad:\\xFF\\xFE' in first['user_agent']
    assert first['uri'] == logged(HOSTILE_URI) and first['uri'].startswith('/café/\\xFF\\xFE?q=%22"\\x')
    assert first['request'] == 'GET %s HTTP/1.1' % logged(HOSTILE_URI)
    assert first['referer'] == logged(b'\xe9t\xe9\x1b[31m')
    assert first['x_forwarded_for'] == logged(b'1.2.3.4, "\xfa"')
    assert first['remote_user'] == logged(user)
    assert [e['status'] for e in entries[1:5]] == [400, 200, 9, 400]
    assert entries[6]['user_agent'] == '\\xC3' and entries[6]['status'] == 400
    assert '[error]' not in n.error_log and '[alert]' not in n.error_log, n.error_log[-3000:]
