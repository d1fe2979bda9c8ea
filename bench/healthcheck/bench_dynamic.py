#!/usr/bin/env python3
"""Peers that DNS adds and removes (issue 25): 500 peers resolved from one
`server app.test:PORT resolve` line, 10 % of the addresses replaced every
10 s, a health checker on the upstream, 2 workers, a light client load;
beside it, at the same time, a control front with the same config whose
500 peers never change.

Everything runs in a private network namespace (the script re-runs itself
under `unshare -n` and brings `lo` up; root needed), so nothing listens
outside it:
- a DNS server on loopback (tests/support/dns.py, TTL 1 s; the fronts'
  `resolver ... valid=1s`): its answer for app.test is the churning peer
  set (127.20.x.y), for ctl.test the control's (127.30.x.y); answers over
  512 bytes go over TCP, as in production;
- a backend nginx (the same bundle, its own prefix) on a wildcard address,
  so every 127.x.y.z answers: `/health` 200, anything else its
  `$server_addr`; it logs `$msec $server_addr $request_uri`;
- two fronts (2 workers each, `reuseport`), identical but for the name:
  `upstream dyn { zone; server NAME:PORT resolve; }`, `spawn_checker`
  (interval, timeout 1000 ms, concurrency 20, valid_statuses {200}, fall 2,
  rise 1), `vhost_traffic_status_zone` (16m: its default 1m holds ~250
  entries, fewer than the peers), a Lua endpoint reading the healthcheck
  lua_shared_dict;
- per front a client: --rps requests/s over 4 connections (each reconnects
  every 50 requests, so both workers get traffic), URIs /c/N.

Phases, after every initial address was checked and a 10 s warm-up:
baseline (--baseline s: nothing changes) then churn (--duration s: at a
random point of the first 2 s of every 10 s tick, 10 % of app.test's
addresses removed and as many new ones, never used before, appended).

Figures:
- workers' CPU (utime+stime) of each front per phase, % of one core; the
  churn cost as (churning / control in the churn phase) / (the same in the
  baseline phase): the control runs at the same time on the same machine,
  so the load of other jobs cancels out (it does not between two phases:
  run-to-run the same front varied 6-8 % of a core on this shared machine);
  also the churning front's churn/baseline ratio and the paired 10 s
  windows;
- the healthcheck shm: capacity - free_space (pages in use), all keys and
  the `st:dyn:p:` keys (one per peer the checker knows), every 2 s: peak
  and end of churn, the control's; against lualib/README.md's rule
  (700 B x (peers + churn/s x forget_after), 500 B more per peer with the
  best-effort records);
- the traffic-status zone: sharedZones.usedSize (and usedNode,
  droppedNodes) from `/status/control?cmd=status&group=server&zone=::main`
  every 2 s, and from `/status/format/json` at the start and the end (with
  the number of `dyn` peers it lists);
- per added address: the DNS change -> first DNS answer that holds it
  ("answered": nginx asked) -> first health check logged by the backend
  ("checked") -> first client request ("routed"); median / p95 / max over
  every address added; how many were routed before their first check
  (`initial_state = "up"` allows it: the checker turns a new peer up
  within its sync period);
- per removed address: its last client request and last health check after
  the first DNS answer without it; client requests later than 2 s after it.

Usage: NP_BUNDLE=<bundle> python3 bench/healthcheck/bench_dynamic.py
       [--duration 300] [--baseline 120] [--peers 500] [--churn 0.1]
       [--every 10] [--interval 1000] [--concurrency 20] [--rps 200]
       [--shm 8m] [--vts-zone 16m] [--initial-state up] [--seed 1]
       [--json out.json] [--markdown out.md] [--what-else TEXT] [--keep DIR]
Prints one JSON line (and a markdown section with --markdown).  Stops
everything it started; the namespace goes with the last process in it.
"""
import argparse
import http.client
import json
import os
import pathlib
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / 'tests'))
from common import BUNDLE, ROOT, Server, main_conf  # noqa: E402
from support.dns import DnsServer, _key  # noqa: E402

NAME = 'app.test'           # the churning front's name
CONTROL = 'ctl.test'        # the control front's: never changes
UPSTREAM = 'dyn'
WORKERS = 2
CLIENT_CONNS = 4
CLK_TCK = os.sysconf('SC_CLK_TCK')
IN_NS = 'NP_BENCH_DYNAMIC_NETNS'


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def addr_of(i, first=20):
    """The i-th address handed out: 127.20.0.1, 127.20.0.2, ... (127.30.x.y
    for the control with first=30)"""
    return '127.%d.%d.%d' % (first + i // 62500, (i // 250) % 250, i % 250 + 1)


class TimedDns(DnsServer):
    """The DNS server, noting when it answered which version of the set."""

    def __init__(self):
        super().__init__()
        self.gen = 0
        self.answers = []          # (time, generation) of every A answer

    def address_rrs(self, qname, addrs, qtype, ttl):   # called under self.lock
        if _key(qname) == NAME:
            self.answers.append((time.time(), self.gen))
        return DnsServer.address_rrs(qname, addrs, qtype, ttl)

    def change(self, name, addrs):
        """Replace the set; returns (time, generation) of the change."""
        with self.lock:
            self.addrs[_key(name)] = list(addrs)
            self.gen += 1
            return time.time(), self.gen

    def first_answer(self, gen):
        with self.lock:
            return next((t for t, g in self.answers if g >= gen), None)


# ---------------------------------------------------------------- configs

def backend_conf(port, log):
    return main_conf(f"""
    log_format dyn '$msec $server_addr $request_uri';
    server {{
        listen {port} backlog=4096;      # wildcard: every 127.x.y.z of the namespace
        access_log {log} dyn buffer=256k flush=1s;
        keepalive_timeout 30s;
        location = /health {{ return 200 "ok\\n"; }}
        location / {{ return 200 "$server_addr\\n"; }}
    }}""", workers=1, affinity=False, main='worker_rlimit_nofile 16384;')


def front_conf(port, status_port, bport, dns, name, a):
    checker = '' if a.no_checker else f"""
    init_worker_by_lua_block {{
        local hc = require "resty.upstream.healthcheck"
        local ok, err = hc.spawn_checker{{
            shm = "healthcheck", upstream = "{UPSTREAM}", type = "http",
            http_req = "GET /health HTTP/1.0\\r\\nHost: {name}\\r\\n\\r\\n",
            interval = {a.interval}, timeout = 1000, fall = 2, rise = 1,
            concurrency = {a.concurrency}, valid_statuses = {{200}},
            initial_state = "{a.initial_state}",
        }}
        if not ok then ngx.log(ngx.ERR, "spawn_checker: ", err) end
    }}"""
    return main_conf(f"""
    lua_shared_dict healthcheck {a.shm};
    lua_socket_log_errors off;
    vhost_traffic_status_zone shared:ngx_http_vhost_traffic_status:{a.vts_zone};
    {dns.resolver()}
    resolver_timeout 2s;
    upstream {UPSTREAM} {{
        zone {UPSTREAM} 4m;
        server {name}:{bport} resolve;
    }}
    {checker}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ proxy_pass http://{UPSTREAM}; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        location /status {{
            vhost_traffic_status_display;
            vhost_traffic_status_display_format json;
        }}
        location = /shm {{
            content_by_lua_block {{
                local d = ngx.shared.healthcheck
                local cap, free = d:capacity(), d:free_space()
                local keys = d:get_keys(0)
                local st, prefix = 0, "st:{UPSTREAM}:p:"
                for _, k in ipairs(keys) do
                    if k:sub(1, #prefix) == prefix then st = st + 1 end
                end
                local gone = 0
                for _ in (d:get("gone:{UPSTREAM}") or ""):gmatch("[^\\n]+") do gone = gone + 1 end
                local peers = require("ngx.upstream").get_primary_peers("{UPSTREAM}") or {{}}
                local down = 0
                for _, p in ipairs(peers) do if p.down then down = down + 1 end end
                ngx.say(cap, " ", free, " ", #keys, " ", st, " ", gone, " ", #peers, " ", down)
            }}
        }}
    }}""", workers=WORKERS, affinity=False, main='worker_rlimit_nofile 16384;')


# ---------------------------------------------------------------- probes

def get(port, path, timeout=10):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def shm_sample(sport):
    st, body = get(sport, '/shm')
    cap, free, nkeys, nst, gone, peers, down = (int(x) for x in body.split())
    return {'used': cap - free, 'capacity': cap, 'keys': nkeys, 'state_keys': nst,
            'gone': gone, 'peers': peers, 'down': down}


def vts_main(sport):
    st, body = get(sport, '/status/control?cmd=status&group=server&zone=::main')
    z = json.loads(body)['sharedZones']
    return {'usedSize': z['usedSize'], 'usedNode': z['usedNode'], 'maxSize': z['maxSize'],
            'dropped': sum(z.get('droppedNodes', {}).values())}


def vts_full(sport):
    st, body = get(sport, '/status/format/json', timeout=30)
    doc = json.loads(body)
    z = doc['sharedZones']
    peers = doc.get('upstreamZones', {}).get(UPSTREAM, [])
    return {'usedSize': z['usedSize'], 'usedNode': z['usedNode'], 'maxSize': z['maxSize'],
            'droppedNodes': z.get('droppedNodes'), 'dyn_peers_listed': len(peers),
            'json_bytes': len(body)}


def machine_jiffies():
    """(busy, total) jiffies of every CPU, from /proc/stat."""
    f = [int(x) for x in pathlib.Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]]
    total = sum(f[:8])
    return total - f[3] - f[4], total


def children(pid):
    try:
        text = pathlib.Path('/proc/%d/task/%d/children' % (pid, pid)).read_text()
        return sorted(int(x) for x in text.split())
    except OSError:
        out = []
        for p in pathlib.Path('/proc').iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / 'stat').read_text()
                except OSError:
                    continue
                if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
        return sorted(out)


def cpu_s(pid):
    """utime + stime of one process, in seconds (None when it is gone)."""
    try:
        fields = pathlib.Path('/proc/%d/stat' % pid).read_text().rsplit(')', 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Client(threading.Thread):
    """A paced client: one request every `period` s on a keep-alive
    connection that is reopened every 50 requests."""

    def __init__(self, port, period, tag):
        super().__init__(daemon=True)
        self.port, self.period, self.tag = port, period, tag
        self.stop = threading.Event()
        self.ok = self.errors = 0
        self.statuses = {}

    def run(self):
        conn, n, due = None, 0, time.monotonic()
        while not self.stop.is_set():
            if conn is None or n % 50 == 0:
                if conn:
                    conn.close()
                conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=5)
            n += 1
            try:
                conn.request('GET', '/c/%s-%d' % (self.tag, n))
                r = conn.getresponse()
                r.read()
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                if r.status == 200:
                    self.ok += 1
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = None
            due += self.period
            delay = due - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                due = time.monotonic()      # behind: do not burst
        if conn:
            conn.close()


class Sampler(threading.Thread):
    """The shm and the traffic-status zone every `every` s, tagged with the phase."""

    def __init__(self, sport, every=2.0):
        super().__init__(daemon=True)
        self.sport, self.every = sport, every
        self.phase = 'warmup'
        self.rows, self.errors = [], []
        self.stop = threading.Event()

    def sample(self):
        row = {'t': time.time(), 'phase': self.phase}
        row['shm'] = shm_sample(self.sport)
        row['vts'] = vts_main(self.sport)
        self.rows.append(row)
        return row

    def run(self):
        while not self.stop.wait(self.every):
            try:
                self.sample()
            except Exception as e:          # noqa: BLE001 - noted, the run goes on
                self.errors.append('%.1f %r' % (time.time(), e))


def start(server, *ports):
    """Server.start, then wait for the pid file: nginx listens before it
    daemonizes and writes it, so an open port does not mean it is there yet."""
    server.start(*ports)
    pidfile = server.dir / 'logs' / 'nginx.pid'
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, 'nginx.pid')
    return server


def masters_of(server):
    """The master processes running on this server's prefix (from /proc)."""
    want = (' -p %s/ ' % server.dir).encode()
    out = []
    for p in pathlib.Path('/proc').iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / 'cmdline').read_bytes().replace(b'\0', b' ')
            except OSError:
                continue
            if want in cmd:         # argv, or the master's title (workers' titles have no -p)
                out.append(int(p.name))
    return out


def stop(server):
    """QUIT the server's master (found by its prefix when the pid file is
    not there) and wait for it, then remove the prefix (Server.stop)."""
    pids = masters_of(server)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            pass
    end = time.monotonic() + 30
    while time.monotonic() < end and any(os.path.exists('/proc/%d' % p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if os.path.exists('/proc/%d' % pid):
            os.kill(pid, signal.SIGKILL)
    server.stop()


# ---------------------------------------------------------------- the log

def read_log(path):
    """{address: ([check times], [client request times])}, sorted."""
    seen = {}
    with open(path, 'rb') as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3:
                continue
            t, addr, uri = float(parts[0]), parts[1].decode(), parts[2]
            checks, clients = seen.setdefault(addr, ([], []))
            (checks if uri == b'/health' else clients).append(t)
    for checks, clients in seen.values():
        checks.sort()
        clients.sort()
    return seen


def bursts(times, gap=0.3):
    """The checker's rounds in the backend log: (start, end, checks) of each run
    of check times with no gap over `gap` s (a round of 500 fast checks takes
    well under the interval, so rounds are separated by about the interval)."""
    out = []
    for t in times:
        if out and t - out[-1][1] <= gap:
            out[-1][1] = t
            out[-1][2] += 1
        else:
            out.append([t, t, 1])
    return [tuple(r) for r in out[1:-1]]        # the first and last may be cut


def dist(values):
    """median / p95 / max of a list of seconds, in seconds (3 decimals)."""
    if not values:
        return None
    v = sorted(values)
    p95 = v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]
    return {'n': len(v), 'min': round(v[0], 3), 'median': round(statistics.median(v), 3),
            'p95': round(p95, 3),
            'max': round(v[-1], 3)}


def count_lines(path, words):
    n = {w: 0 for w in words}
    samples = []
    try:
        with open(path, errors='replace') as f:
            for line in f:
                for w in words:
                    if w in line:
                        n[w] += 1
                        if len(samples) < 5 and w != '[warn]':
                            samples.append(line.strip()[:300])
    except OSError:
        pass
    return n, samples


def address_figures(added, removed, seen, first_answer):
    """The timings of every address added and removed: `added` and `removed`
    map an address to (change time, generation), `seen` is read_log()'s,
    first_answer(generation) the DNS server's first answer holding it."""
    answered, checked, routed, check_to_route, early = [], [], [], [], 0
    a_checked, a_routed = [], []
    never_checked = never_routed = 0
    for x, (t_c, gen) in added.items():
        if gen == 1:
            continue                  # the initial set: not a change
        t_dns = first_answer(gen)
        checks, reqs = seen.get(x, ([], []))
        if t_dns:
            answered.append(t_dns - t_c)
        if checks:
            checked.append(checks[0] - t_c)
            if t_dns:
                a_checked.append(checks[0] - t_dns)
        else:
            never_checked += 1
        if reqs:
            routed.append(reqs[0] - t_c)
            if t_dns:
                a_routed.append(reqs[0] - t_dns)
            if checks and reqs[0] < checks[0]:
                early += 1
            if checks:
                check_to_route.append(reqs[0] - checks[0])
        else:
            never_routed += 1
    out = {}
    out['added'] = {'n': sum(1 for v in added.values() if v[1] > 1),
                    'change_to_dns_answer': dist(answered),
                    'change_to_checked': dist(checked),
                    'change_to_routed': dist(routed),
                    'dns_answer_to_checked': dist(a_checked),
                    'dns_answer_to_routed': dist(a_routed),
                    'checked_to_routed': dist(check_to_route),
                    'never_checked': never_checked, 'never_routed': never_routed,
                    'routed_before_first_check': early}
    last_req, last_check, late_reqs, late_addrs = [], [], 0, 0
    for x, (t_c, gen) in removed.items():
        t_dns = first_answer(gen) or t_c
        checks, reqs = seen.get(x, ([], []))
        after = [t for t in reqs if t > t_dns]
        last_req.append(after[-1] - t_dns if after else 0.0)
        ca = [t for t in checks if t > t_dns]
        last_check.append(ca[-1] - t_dns if ca else 0.0)
        late = [t for t in after if t > t_dns + 2.0]
        late_reqs += len(late)
        late_addrs += bool(late)
    out['removed'] = {'n': len(removed),
                      'last_request_after_dns_answer': dist(last_req),
                      'last_check_after_dns_answer': dist(last_check),
                      'requests_later_than_2s': late_reqs, 'addresses_with_those': late_addrs}
    return out


# ---------------------------------------------------------------- the run

def wait_until(pred, timeout, what, step=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(step)
    raise RuntimeError('timed out waiting for ' + what)


class Front:
    """One front nginx, its clients and its sampler."""

    def __init__(self, label, name, bport, dns, a):
        self.label, self.name = label, name
        self.port, self.sport = free_port(), free_port()
        self.server = Server(front_conf(self.port, self.sport, bport, dns, name, a))
        self.clients, self.sampler, self.master = [], None, None

    def start(self):
        start(self.server, self.port, self.sport)
        self.master = self.server.pid()
        wait_until(lambda: len(children(self.master)) == WORKERS, 30, 'the front workers')
        return self

    def load(self, rps):
        for i in range(CLIENT_CONNS):
            c = Client(self.port, CLIENT_CONNS / rps, '%s%d' % (self.label[0], i))
            c.start()
            self.clients.append(c)
        self.sampler = Sampler(self.sport)
        self.sampler.start()

    def cpu(self):
        """(workers' CPU s, {worker pid: CPU s})"""
        per = {p: cpu_s(p) or 0.0 for p in children(self.master)}
        return sum(per.values()), per

    def halt(self):
        if self.sampler:
            self.sampler.stop.set()
            self.sampler.join()
        for c in self.clients:
            c.stop.set()
        for c in self.clients:
            c.join()

    def client_counts(self):
        out = {'ok': sum(c.ok for c in self.clients), 'errors': sum(c.errors for c in self.clients),
               'statuses': {}}
        for c in self.clients:
            for st, n in c.statuses.items():
                out['statuses'][st] = out['statuses'].get(st, 0) + n
        return out


def phase_rows(rows, phase):
    return [r for r in rows if r['phase'] == phase]


def run(a):
    rnd = random.Random(a.seed)
    n_churn = max(1, int(round(a.peers * a.churn)))
    next_addr = 0

    def fresh(k):
        nonlocal next_addr
        out = [addr_of(next_addr + i) for i in range(k)]
        next_addr += k
        return out

    current = fresh(a.peers)
    control_addrs = [addr_of(i, first=30) for i in range(a.peers)]
    dns = TimedDns().start()
    dns.set(CONTROL, control_addrs)
    t_set, _ = dns.change(NAME, current)
    started, fronts = [], []
    out = {'bench': 'dynamic_peers', 'peers': a.peers, 'churn_per_tick': n_churn,
           'every_s': a.every, 'duration_s': a.duration, 'baseline_s': a.baseline,
           'interval_ms': a.interval, 'concurrency': a.concurrency, 'fall': 2, 'rise': 1,
           'initial_state': a.initial_state, 'workers': WORKERS, 'client_rps': a.rps,
           'shm_dict': a.shm, 'vts_zone': a.vts_zone, 'forget_after_s': 60, 'dns_ttl_s': 1,
           'checker': not a.no_checker}
    added = {addr: (t_set, 1) for addr in current}    # addr -> (change time, gen)
    removed = {}                                     # addr -> (change time, gen)
    try:
        bport = free_port()
        backend = Server(backend_conf(bport, 'logs/dyn.log'))
        started.append(backend)
        start(backend, bport)
        bmaster = backend.pid()
        blog = backend.dir / 'logs' / 'dyn.log'
        dyn = Front('churning', NAME, bport, dns, a)
        ctl = Front('control', CONTROL, bport, dns, a)
        fronts = [dyn, ctl]
        for f in fronts:
            started.append(f.server)
            f.start()

        # every initial address checked once (the backend flushes its log every
        # 1 s); without a checker, in both balancers
        def all_checked():
            if a.no_checker:
                return all(shm_sample(f.sport)['peers'] == a.peers for f in fronts)
            seen = read_log(blog) if blog.exists() else {}
            return all(seen.get(x, ([], []))[0] for x in current + control_addrs)
        wait_until(all_checked, 120, 'the first check of every initial peer', step=1.0)
        out['first_round_s'] = round(time.time() - t_set, 2)

        for f in fronts:
            f.load(a.rps)
        time.sleep(a.warmup)
        vts_start = vts_full(dyn.sport)

        def others():
            """CPU s of the whole machine and of this bench's other processes
            (backend nginx, this Python: DNS server, clients, samplers)."""
            busy, _ = machine_jiffies()
            t = os.times()
            ours = t.user + t.system + sum(cpu_s(p) or 0.0 for p in [bmaster] + children(bmaster))
            ours += sum(cpu_s(f.master) or 0.0 for f in fronts)
            return busy / CLK_TCK, ours

        def snapshot():
            return time.monotonic(), [f.cpu() for f in fronts], others()

        totals, spans = {}, {}
        for phase, length in (('baseline', a.baseline), ('churn', a.duration)):
            for f in fronts:
                f.sampler.phase = phase
            s0 = prev = snapshot()
            wall0 = time.time()
            windows = []                  # per 10 s: [churning %, control %]
            t0 = s0[0]
            for k in range(int(length // a.every)):
                if phase == 'churn':
                    # at a random point of the first 2 s of the tick: nginx asks
                    # again every valid + 1 = 2 s, and a change at a fixed
                    # phase of that cycle would see one delay only
                    time.sleep(max(0.0, t0 + k * a.every + rnd.uniform(0, 2.0) - time.monotonic()))
                    gone = rnd.sample(current, n_churn)
                    new = fresh(n_churn)
                    gone_set = set(gone)
                    current = [x for x in current if x not in gone_set] + new
                    t_change, gen = dns.change(NAME, current)
                    for x in new:
                        added[x] = (t_change, gen)
                    for x in gone:
                        removed[x] = (t_change, gen)
                time.sleep(max(0.0, t0 + (k + 1) * a.every - time.monotonic()))
                now = snapshot()
                windows.append([100.0 * (now[1][i][0] - prev[1][i][0]) / (now[0] - prev[0])
                                for i in range(len(fronts))])
                prev = now
            s1 = snapshot()
            dt = s1[0] - s0[0]
            mach = s1[2][0] - s0[2][0]
            ours = s1[2][1] - s0[2][1] + sum(s1[1][i][0] - s0[1][i][0] for i in range(len(fronts)))
            ph = {'seconds': round(dt, 1),
                  'load_avg_1min_end': round(os.getloadavg()[0], 2),
                  # % of one core: the whole machine (all CPUs), and what is not this bench
                  'machine_busy_pct': round(100.0 * mach / dt, 1),
                  'other_processes_pct': round(100.0 * (mach - ours) / dt, 1),
                  'windows_pct': [[round(x, 2) for x in w] for w in windows]}
            for i, f in enumerate(fronts):
                used = s1[1][i][0] - s0[1][i][0]
                ph[f.label] = {
                    'worker_cpu_s': round(used, 2),
                    'pct_of_core': round(100.0 * used / dt, 2),
                    'per_worker_cpu_s': {str(p): round(v - s0[1][i][1].get(p, 0.0), 2)
                                         for p, v in s1[1][i][1].items()},
                    'window_pct_median': round(statistics.median(w[i] for w in windows), 2),
                    'window_pct_max': round(max(w[i] for w in windows), 2)}
            ratios = [w[0] / w[1] for w in windows if w[1] > 0]
            ph['ratio'] = round(ph['churning']['pct_of_core'] / ph['control']['pct_of_core'], 3)
            ph['window_ratio'] = dist(ratios)
            totals[phase] = ph
            spans[phase] = (wall0, time.time())
            print('%s: churning %s, control %s, ratio %s, machine %s %%, others %s %%' % (
                phase, ph['churning']['pct_of_core'], ph['control']['pct_of_core'], ph['ratio'],
                ph['machine_busy_pct'], ph['other_processes_pct']), file=sys.stderr)
        finals = {}
        for f in fronts:
            f.sampler.phase = 'end'
            finals[f.label] = f.sampler.sample()
        vts_end = vts_full(dyn.sport)
        vts_ctl = vts_full(ctl.sport)
        for f in fronts:
            f.halt()
        time.sleep(1.5)
        out['client'] = {f.label: f.client_counts() for f in fronts}
        out['cpu'] = totals
        b, c = totals['baseline'], totals['churn']
        out['cpu_churn_cost'] = round(c['ratio'] / b['ratio'], 3)
        out['cpu_churning_front_churn_vs_baseline'] = round(
            c['churning']['pct_of_core'] / b['churning']['pct_of_core'], 3)
        out['cpu_control_front_churn_vs_baseline'] = round(
            c['control']['pct_of_core'] / b['control']['pct_of_core'], 3)

        # shm and zone
        rows = dyn.sampler.rows
        base_rows, churn_rows = phase_rows(rows, 'baseline'), phase_rows(rows, 'churn') + [finals['churning']]
        final = finals['churning']
        out['shm'] = {
            'capacity': final['shm']['capacity'],
            'baseline_end': base_rows[-1]['shm'],
            'peak_used': max(r['shm']['used'] for r in churn_rows),
            'peak_state_keys': max(r['shm']['state_keys'] for r in churn_rows),
            'peak_keys': max(r['shm']['keys'] for r in churn_rows),
            'peak_gone': max(r['shm']['gone'] for r in churn_rows),
            'end': final['shm'],
            'control_end': finals['control']['shm'],
            'balancer_peers_min_max': [min(r['shm']['peers'] for r in churn_rows),
                                       max(r['shm']['peers'] for r in churn_rows)],
            'balancer_down_max': max(r['shm']['down'] for r in churn_rows),
        }
        rule_peers = a.peers + n_churn / a.every * 60
        out['shm']['rule'] = {'peers_known': rule_peers, 'bytes': int(700 * rule_peers),
                              'bytes_with_records': int(1200 * rule_peers)}
        out['vts'] = {
            'start': vts_start,
            'baseline_end': base_rows[-1]['vts'],
            'peak_usedSize': max(r['vts']['usedSize'] for r in churn_rows),
            'peak_usedNode': max(r['vts']['usedNode'] for r in churn_rows),
            'end': vts_end,
            'control_end': vts_ctl,
        }
        out['sampler_errors'] = (dyn.sampler.errors + ctl.sampler.errors)[:5]
        out['addresses_used'] = next_addr

        # the log: stop the fronts, then the backend, so that it flushes
        for s in [f.server for f in fronts] + [backend]:
            pid = s.pid()
            os.kill(pid, signal.SIGQUIT)
            wait_until(lambda: not os.path.exists('/proc/%d' % pid), 30, 'nginx to quit')
        seen = read_log(blog)

        def mine(addr, f):
            return addr.startswith('127.2') if f is dyn else addr.startswith('127.3')
        for f in fronts:
            checks = sorted(t for x, v in seen.items() if mine(x, f) for t in v[0])
            reqs = sorted(t for x, v in seen.items() if mine(x, f) for t in v[1])
            for phase, (w0, w1) in spans.items():
                ph = totals[phase][f.label]
                n_checks = sum(1 for t in checks if w0 <= t < w1)
                rounds = bursts([t for t in checks if w0 <= t < w1])
                ph['checks_per_s'] = round(n_checks / (w1 - w0), 1)
                ph['client_req_per_s'] = round(sum(1 for t in reqs if w0 <= t < w1) / (w1 - w0), 1)
                ph['rounds'] = len(rounds)
                ph['round_s'] = dist([r[1] - r[0] for r in rounds])
                ph['checks_per_round'] = dist([r[2] for r in rounds])
                ph['us_cpu_per_check'] = round(1e6 * ph['worker_cpu_s'] / n_checks, 1) if n_checks else None

        out.update(address_figures(added, removed, seen, dns.first_answer))
        out['dns_answers'] = len(dns.answers)
        words = ['[alert]', '[crit]', '[error]', '[warn]', 'no memory', 'peers changed']
        out['error_log'], out['error_log_samples'] = {}, {}
        for f in fronts:
            out['error_log'][f.label], out['error_log_samples'][f.label] = count_lines(
                f.server.dir / 'logs' / 'error.log', words)
        if a.keep:
            logdir = pathlib.Path(a.keep)
            logdir.mkdir(parents=True, exist_ok=True)
            for s, n in ((dyn.server, 'front'), (ctl.server, 'control'), (backend, 'backend')):
                subprocess.run(['cp', '-r', str(s.dir / 'logs'), str(logdir / n)], check=False)
            (logdir / 'samples.json').write_text(json.dumps({f.label: f.sampler.rows for f in fronts}))
            (logdir / 'dns_answers.json').write_text(json.dumps(dns.answers))
            (logdir / 'changes.json').write_text(json.dumps({'added': added, 'removed': removed}))
        return out
    finally:
        for f in fronts:
            f.halt()
        for s in reversed(started):
            stop(s)
        dns.stop()


# ---------------------------------------------------------------- output

def mb(n):
    return '%.2f MB' % (n / 1e6)


def markdown(r, meta):
    cpu, shm, vts, ad, rm = r['cpu'], r['shm'], r['vts'], r['added'], r['removed']
    b, c = cpu['baseline'], cpu['churn']
    bd, bc, cd, cc = b['churning'], b['control'], c['churning'], c['control']

    def per_round(x):
        x = x['checks_per_round']
        return '%d checks' % x['median'] if x and x['min'] == x['max'] else (
            '%d checks (min %d, max %d)' % (x['median'], x['min'], x['max']) if x else 'n/a')

    def d(x, unit=' s'):
        return ('%.2f / %.2f / %.2f%s' % (x['median'], x['p95'], x['max'], unit)) if x else 'n/a'

    def rnd(x):
        return d(x['round_s']) + '; ' + per_round(x)

    def wr(x):
        w = x['window_ratio']
        return 'median %.2f (%.2f-%.2f)' % (w['median'], w['min'], w['max']) if w else 'n/a'
    el = r['error_log']['churning']
    lines = [
        '## Peers that DNS adds and removes (issue 25): %d peers, %d replaced every %d s%s' % (
            r['peers'], r['churn_per_tick'], r['every_s'],
            '' if r['checker'] else ', no health checker (`--no-checker`)'),
        '',
        'Measured by hand (not by `bench/report.py`) with `bench/healthcheck/bench_dynamic.py` on %s, %s' % (
            meta['date'], meta['what_else']),
        'Setup: one `server %s:PORT resolve` line, `zone`, a DNS server on loopback (tests/support/dns.py, TTL 1 s,'
        % NAME,
        '`resolver ... valid=1s`; the %d-address answer goes over TCP), checker interval %d ms, concurrency %d,' % (
            r['peers'], r['interval_ms'], r['concurrency']),
        'fall %d, rise %d, `initial_state = "%s"`, 2 workers, %d client req/s through the proxy; every address added' % (
            r['fall'], r['rise'], r['initial_state'], r['client_rps']),
        'is new. The **control** is a second front with the same config and load at the same time, whose %d peers' % (
            r['peers']),
        '(`%s`) never change: the CPU figure is churning/control in the churn phase over the same ratio in a' % CONTROL,
        '%d s baseline phase where neither changes; then %d s of churn (%d changes, %d addresses added and removed).' % (
            r['baseline_s'], r['duration_s'], r['duration_s'] // r['every_s'], ad['n']),
        'Bundle: %s.' % meta['bundle'],
        '',
        '| figure | churning front | control front (same time) | ratio / rule |',
        '|---|---|---|---|',
        '| workers\' CPU (utime+stime), %% of one core, baseline phase (%d s, nothing changes) | %.2f %% | %.2f %% | %.3f |' % (
            r['baseline_s'], bd['pct_of_core'], bc['pct_of_core'], b['ratio']),
        '| the same, churn phase (%d s) | %.2f %% | %.2f %% | %.3f |' % (
            r['duration_s'], cd['pct_of_core'], cc['pct_of_core'], c['ratio']),
        '| **churn cost**: (churning / control) churn phase over baseline phase | | | **%.3f** |' % r['cpu_churn_cost'],
        '| churn phase over baseline phase, each front alone (machine load changed between them) | %.3f | %.3f | |' % (
            r['cpu_churning_front_churn_vs_baseline'], r['cpu_control_front_churn_vs_baseline']),
        '| churning / control per 10 s window: baseline phase; churn phase | | | %s; %s |' % (wr(b), wr(c)),
        '| churn cost as CPU per DNS change of %d addresses: (churning - control x baseline ratio) x %d s | %.0f ms | | |' % (
            r['churn_per_tick'], r['every_s'],
            10.0 * r['every_s'] * (cd['pct_of_core'] - cc['pct_of_core'] * b['ratio'])),
        '| machine busy, %% of one core (2 cores), baseline / churn phase: all; not this bench | %.0f / %.0f %%; %.0f / %.0f %% | | |' % (
            b['machine_busy_pct'], c['machine_busy_pct'], b['other_processes_pct'], c['other_processes_pct']),
        '| health checks / client requests per second, churn phase (backend log) | %.0f / %.0f | %.0f / %.0f | |' % (
            cd['checks_per_s'], cd['client_req_per_s'], cc['checks_per_s'], cc['client_req_per_s']),
    ]
    if r['checker']:
        lines += [
            '| workers\' CPU per health check, churn phase (all of it charged to the checks) | %.0f µs | %.0f µs | %.2f |' % (
                cd['us_cpu_per_check'], cc['us_cpu_per_check'], cd['us_cpu_per_check'] / cc['us_cpu_per_check']),
            '| a round (a burst of checks in the backend log), churn phase: duration median / p95 / max | %s | %s | bound: ceil(%d / %d) x 3 x 1 s = %d s |' % (
                rnd(cd), rnd(cc), r['peers'], r['concurrency'], 3 * -(-r['peers'] // r['concurrency'])),
        ]
    lines += [
        '| healthcheck shm in use (capacity - free_space; dict %s) | peak %s, end %s | %s | rule: %s (%s with the records) for %d peers |' % (
            r['shm_dict'], mb(shm['peak_used']), mb(shm['end']['used']), mb(shm['control_end']['used']),
            mb(shm['rule']['bytes']), mb(shm['rule']['bytes_with_records']), shm['rule']['peers_known']),
        '| per-peer state keys (`st:%s:p:`) | peak %d, end %d | %d | %d (%d + %g/s x 60 s) |' % (
            UPSTREAM, shm['peak_state_keys'], shm['end']['state_keys'], shm['control_end']['state_keys'],
            shm['rule']['peers_known'], r['peers'], r['churn_per_tick'] / r['every_s']),
        '| all shm keys; removed peers remembered (`gone:`) | peak %d, end %d; peak %d | %d; %d | |' % (
            shm['peak_keys'], shm['end']['keys'], shm['peak_gone'], shm['control_end']['keys'],
            shm['control_end']['gone']),
        '| traffic-status zone usedSize (`vhost_traffic_status_zone` %s) | start %s (%d nodes), peak %s (%d nodes), end %s (%d nodes, %d peers listed) | end %s (%d nodes) | dropped nodes: %d |' % (
            r['vts_zone'], mb(vts['start']['usedSize']), vts['start']['usedNode'],
            mb(vts['peak_usedSize']), vts['peak_usedNode'], mb(vts['end']['usedSize']),
            vts['end']['usedNode'], vts['end']['dyn_peers_listed'], mb(vts['control_end']['usedSize']),
            vts['control_end']['usedNode'], sum((vts['end']['droppedNodes'] or {}).values())),
        '| DNS change -> nginx\'s first answer with it (median / p95 / max) | %s | | nginx asks every valid + 1 = 2 s |' % d(
            ad['change_to_dns_answer']),
        '| DNS change -> first health check of a new address | %s | | |' % d(ad['change_to_checked']),
        '| DNS change -> first client request to it | %s | | |' % d(ad['change_to_routed']),
        '| nginx\'s first answer with it -> first health check / first client request | %s / %s | | interval 1 s, a round ~0.05 s |' % (
            d(ad.get('dns_answer_to_checked')), d(ad.get('dns_answer_to_routed'))),
        '| first check -> first client request | %s | | |' % d(ad['checked_to_routed']),
        '| added addresses never checked / never routed / routed before their first check | %d / %d / %d | | |' % (
            ad['never_checked'], ad['never_routed'], ad['routed_before_first_check']),
        '| removed address: last client request after the first DNS answer without it | %s | | |' % d(
            rm['last_request_after_dns_answer']),
        '| removed address: last health check after that answer | %s | | |' % d(rm['last_check_after_dns_answer']),
        '| client requests to removed addresses > 2 s after that answer | %d (%d addresses) | | |' % (
            rm['requests_later_than_2s'], rm['addresses_with_those']),
        '| client requests ok / failed | %d / %d | %d / %d | |' % (
            r['client']['churning']['ok'], r['client']['churning']['errors'],
            r['client']['control']['ok'], r['client']['control']['errors']),
        '| error log: [alert] / [crit] / [error] / [warn] | %d / %d / %d / %d | %d / %d / %d / %d | |' % (
            el['[alert]'], el['[crit]'], el['[error]'], el['[warn]'],
            *(r['error_log']['control'][k] for k in ('[alert]', '[crit]', '[error]', '[warn]'))),
        '',
        '',
    ]
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--duration', type=int, default=300, help='churn phase, s')
    ap.add_argument('--baseline', type=int, default=120, help='static phase before it, s')
    ap.add_argument('--warmup', type=float, default=10)
    ap.add_argument('--peers', type=int, default=500)
    ap.add_argument('--churn', type=float, default=0.1, help='share replaced per tick')
    ap.add_argument('--every', type=int, default=10, help='s between changes')
    ap.add_argument('--interval', type=int, default=1000)
    ap.add_argument('--concurrency', type=int, default=20)
    ap.add_argument('--rps', type=float, default=200)
    ap.add_argument('--shm', default='8m', help='the healthcheck lua_shared_dict')
    ap.add_argument('--vts-zone', default='16m',
                    help='vhost_traffic_status_zone size (its default, 1m, holds ~250 peers)')
    ap.add_argument('--initial-state', default='up', choices=('up', 'down'))
    ap.add_argument('--no-checker', action='store_true',
                    help='no health checker on either front: what churn costs nginx and traffic-status alone')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--json')
    ap.add_argument('--markdown')
    ap.add_argument('--what-else', default='', help='what else ran on the machine (for the markdown)')
    ap.add_argument('--keep', help='copy the logs and samples here')
    a = ap.parse_args()

    if a.baseline < a.every or a.duration < a.every:
        ap.error('--baseline and --duration must be at least --every')
    if os.environ.get(IN_NS) != '1':
        if os.geteuid() != 0:
            # bench/run.sh runs every bench: say why this one did not run
            print(json.dumps({'bench': 'dynamic_peers',
                              'skipped': 'needs root: it runs in its own network namespace (unshare -n)'}))
            return
        env = dict(os.environ, **{IN_NS: '1', 'NP_BUNDLE': str(BUNDLE)})
        os.execvpe('unshare', ['unshare', '-n', '--', sys.executable, os.path.abspath(__file__)]
                   + sys.argv[1:], env)
    subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    load0 = os.getloadavg()
    t0 = time.time()
    r = run(a)
    r['load_avg_before_after'] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    r['wall_s'] = round(time.time() - t0, 1)
    try:
        rev = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = '?'
    r['git'] = rev
    line = json.dumps(r)
    print(line)
    if a.json:
        pathlib.Path(a.json).write_text(line + '\n')
    if a.markdown:
        meta = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0)),
                'what_else': 'load average %.1f before, %.1f after (2 cores)%s.' % (
                    r['load_avg_before_after'][0], r['load_avg_before_after'][1],
                    ('; ' + a.what_else) if a.what_else else ''),
                'bundle': 'git %s, %s' % (rev, platform.machine())}
        pathlib.Path(a.markdown).write_text(markdown(r, meta))


if __name__ == '__main__':
    main()
