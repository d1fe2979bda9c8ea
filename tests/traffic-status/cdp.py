"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol
through --remote-debugging-pipe: no port, no websocket, Python stdlib only.

Chromium reads NUL-terminated JSON commands on fd 3 and writes answers and
events on fd 4.  `Browser` opens one page, collects console errors, evaluates
expressions, resizes the viewport and takes screenshots; `png_pixels` decodes
Chromium's PNGs so tests can look at the pixels of a chart."""
import base64
import json
import os
import queue
import shutil
import struct
import subprocess
import threading
import time
import zlib

CHROMIUM = shutil.which('chromium')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage', '--hide-scrollbars', '--remote-debugging-pipe']


class Browser:
    def __init__(self, tmp_path, width=1280, height=800, timeout=30):
        self.timeout = timeout
        profile = tmp_path / ('cdp-profile-%d' % len(list(tmp_path.glob('cdp-profile-*'))))
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def fds_3_and_4():
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, '--user-data-dir=%s' % profile,
             '--window-size=%d,%d' % (width, height), 'about:blank'],
            preexec_fn=fds_3_and_4, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / 'chromium.log', 'ab'),
            env=dict(os.environ, HOME=str(tmp_path)))
        os.close(to_child)
        os.close(from_child)
        self._next_id, self._answers, self.events = 0, queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()
        self.session = None
        target = self.call('Target.createTarget', url='about:blank')['targetId']
        self.session = self.call('Target.attachToTarget', targetId=target,
                                 flatten=True)['sessionId']
        for domain in ('Page', 'Runtime', 'Log'):
            self.call(domain + '.enable')
        self.viewport(width, height)

    def _read(self):
        buf = b''
        while True:
            data = os.read(self._in, 1 << 16)
            if not data:
                self._answers.put(None)
                return
            buf += data
            while b'\0' in buf:
                raw, buf = buf.split(b'\0', 1)
                msg = json.loads(raw)
                if 'id' in msg:
                    self._answers.put(msg)
                else:
                    self.events.append(msg)

    def call(self, method, **params):
        self._next_id += 1
        msg = {'id': self._next_id, 'method': method, 'params': params}
        if self.session and not method.startswith(('Target.', 'Browser.')):
            msg['sessionId'] = self.session
        os.write(self._out, json.dumps(msg).encode() + b'\0')
        deadline = time.monotonic() + self.timeout
        while True:
            ans = self._answers.get(timeout=max(0.1, deadline - time.monotonic()))
            if ans is None:
                raise AssertionError('chromium went away during %s' % method)
            if ans['id'] == self._next_id:
                if 'error' in ans:
                    raise AssertionError('%s: %s' % (method, ans['error']))
                return ans.get('result', {})

    def navigate(self, url):
        seen = len(self.events)
        self.call('Page.navigate', url=url)
        deadline = time.monotonic() + self.timeout
        while not any(e['method'] == 'Page.loadEventFired' for e in self.events[seen:]):
            if time.monotonic() > deadline:
                raise AssertionError('page %s did not load' % url)
            time.sleep(0.05)

    def eval(self, expression):
        r = self.call('Runtime.evaluate', expression=expression, returnByValue=True,
                      awaitPromise=True)
        if 'exceptionDetails' in r:
            raise AssertionError('%s: %s' % (expression[:200], r['exceptionDetails']))
        return r['result'].get('value')

    def viewport(self, width, height, mobile=False):
        self.call('Emulation.setDeviceMetricsOverride', width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)

    def screenshot(self, path, clip=None):
        params = {'format': 'png', 'captureBeyondViewport': clip is not None}
        if clip:
            params['clip'] = dict(clip, scale=1)
        data = base64.b64decode(self.call('Page.captureScreenshot', **params)['data'])
        path.write_bytes(data)
        return data

    def console_errors(self):
        """Uncaught exceptions, console.error/assert calls and error log
        entries (failed loads, CSP, ...) seen so far."""
        out = []
        for e in self.events:
            m, p = e['method'], e.get('params', {})
            if m == 'Runtime.exceptionThrown':
                out.append('exception: %s' % p['exceptionDetails'])
            elif m == 'Runtime.consoleAPICalled' and p.get('type') in ('error', 'assert'):
                out.append('console.%s: %s' % (p['type'], p.get('args')))
            elif m == 'Log.entryAdded' and p['entry'].get('level') == 'error':
                out.append('log: %s %s' % (p['entry'].get('text'), p['entry'].get('url', '')))
        return out

    def close(self):
        try:
            self.call('Browser.close')
        except (AssertionError, queue.Empty, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)


def png_pixels(data):
    """(width, height, rows): rows of (r, g, b) tuples of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    pos, idat, width = 8, b'', 0
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b'IHDR':
            width, height, depth, color, _, _, interlace = struct.unpack('>IIBBBBB', body)
            assert depth == 8 and color in (2, 6) and not interlace, (depth, color, interlace)
            bpp = 3 if color == 2 else 4
        elif kind == b'IDAT':
            idat += body
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows
