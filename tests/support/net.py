"""Loopback sockets and HTTP for the tests, and the one way to wait."""
import http.client
import os
import socket
import time


def wait_for(predicate, timeout=10.0, interval=0.02, what='condition'):
    """Poll predicate() until it returns a truthy value; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %.1fs waiting for %s' % (timeout, what))
        time.sleep(interval)


def process_gone(pid):
    """pid has exited: no such process, or a zombie.  A daemonized nginx's
    parent is init, and an init that reaps only now and then (this
    workplace's, ~every 2 s) leaves it a zombie that kill(pid, 0) still
    finds: every stop used to wait for the next reaping."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ('Z', 'X')


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def free_port(host='127.0.0.1'):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port6():
    with socket.socket(socket.AF_INET6) as s:
        s.bind(('::1', 0))
        return s.getsockname()[1]


def http_get(host, port, path='/', headers=None, timeout=5, method='GET', body=None):
    """One HTTP/1.1 request; returns (status, headers dict, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


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
