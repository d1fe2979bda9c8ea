"""Helpers for the traffic-status tests (raw HTTP, JSON, promtool)."""
import json
import pathlib
import shutil
import socket
import subprocess

from conftest import conf_wrap, free_port, http_get, port_open, wait_for

def raw_request(port, raw, host='127.0.0.1', timeout=5):
    """Send raw bytes on a fresh connection; read until the server closes.

    Returns the whole response (headers + body) as bytes."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b''.join(chunks)


def req(path, host='counted.test', extra=b''):
    return (b'GET ' + path.encode() + b' HTTP/1.1\r\nHost: ' + host.encode()
            + b'\r\n' + extra + b'Connection: close\r\n\r\n')


def status_of(resp):
    return int(resp.split(b' ', 2)[1])


def keepalive_requests(port, raws, timeout=30):
    """Send requests one after another on keep-alive connections (a new one
    whenever the server closes, e.g. after keepalive_requests).

    Returns the number of responses read."""
    n = 0
    s = f = None
    try:
        for raw in raws:
            if s is None:
                s = socket.create_connection(('127.0.0.1', port), timeout=timeout)
                f = s.makefile('rb')
            s.sendall(raw)
            line = f.readline()
            if not line:
                raise AssertionError('connection closed before a response')
            length, close = 0, False
            while True:
                h = f.readline()
                if h in (b'\r\n', b'\n', b''):
                    break
                k, _, v = h.partition(b':')
                k = k.strip().lower()
                if k == b'content-length':
                    length = int(v.strip())
                elif k == b'connection' and v.strip().lower() == b'close':
                    close = True
            f.read(length)
            n += 1
            if close:
                f.close()
                s.close()
                s = f = None
    finally:
        if s is not None:
            f.close()
            s.close()
    return n


def get(port, path, host='status.test'):
    """(status, headers as text, body bytes); handles chunked bodies."""
    st, headers, body = http_get('127.0.0.1', port, path, headers={'Host': host})
    head = '\r\n'.join('%s: %s' % (k.title(), v) for k, v in headers.items())
    return st, head, body


def get_json(port, path='/status/format/json'):
    st, head, body = get(port, path)
    assert st == 200, (st, body[:500])
    return json.loads(body.decode('utf-8'))


def promtool(text):
    """promtool check metrics: returns (returncode, output)."""
    exe = shutil.which('promtool')
    assert exe, 'promtool (Debian package prometheus) is required'
    p = subprocess.run([exe, 'check', 'metrics'], input=text, capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def backend_conf(ports):
    """An nginx without the module: one server per port answering its name."""
    servers = []
    for i, p in enumerate(ports):
        servers.append(f"""
    server {{
        listen 127.0.0.1:{p};
        location / {{ return 200 "backend{i}\\n"; }}
        location ~ /fail$ {{ return 503; }}
        location ~ /slow$ {{
            content_by_lua_block {{ ngx.sleep(tonumber(ngx.var.arg_t)) ngx.say("slow") }}
        }}
    }}""")
    return conf_wrap(''.join(servers))


def many_requests(port, raws, conns=4):
    """Send raws over `conns` parallel keep-alive connections, one request at a
    time on each (no pipelining: nginx core's parser does deliberately
    unaligned loads on pipelined input, which the UBSan build reports).
    Each raw must not contain Connection: close. Returns responses read."""
    import threading
    parts = [raws[i::conns] for i in range(conns)]
    counts = [0] * conns

    def run(i):
        counts[i] = keepalive_requests(port, parts[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)
