"""A real DNS server on loopback whose records a test changes while nginx runs.

    dns = DnsServer().start()                 # UDP + TCP on 127.0.0.1:<free port>
    dns.set('app.test', ['127.0.1.1', '127.0.1.2'])   # A (AAAA for IPv6 text)
    dns.set_srv('_http._tcp.app.test', [(10, 1, 8080, 'a.app.test'),
                                        (20, 1, 8080, 'b.app.test')])
    dns.remove('app.test')                    # NXDOMAIN from now on
    conf: dns.resolver() -> 'resolver 127.0.0.1:PORT valid=1s ipv6=off;'
    dns.queries('app.test')                   # how many questions it answered
    dns.stop()

Answers carry `ttl` (1 s by default, so nginx asks again every second) and are
authoritative. Like a real server answering a client without EDNS, a UDP
answer over 512 bytes is truncated (TC set), and nginx asks again over TCP: a
name with hundreds of addresses takes the same path as in production.
Changes take effect for the next question (a lock keeps each answer whole).
"""
import ipaddress
import socket
import threading

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


def _key(name):
    return str(DNSLabel(name)).lower().rstrip('.')


class _Handler(DNSHandler):
    udplen = 0      # get_reply truncates
    max_udp = 512

    def get_reply(self, data):
        rdata = super().get_reply(data)
        if self.protocol == 'udp' and len(rdata) > self.max_udp:
            # what a real server sends: the question kept, no records, TC set
            # (dnslib's own truncation drops the question, which nginx rejects)
            reply = DNSRecord.parse(data).reply()
            reply.header.aa, reply.header.tc = 1, 1
            rdata = reply.pack()
        return rdata


class _Resolver(BaseResolver):
    def __init__(self, owner):
        self.owner = owner

    def resolve(self, request, handler):
        reply = request.reply()
        reply.header.aa = 1
        q = request.q
        name = _key(q.qname)
        with self.owner.lock:
            self.owner.asked[name] = self.owner.asked.get(name, 0) + 1
            addrs = self.owner.addrs.get(name)
            srvs = self.owner.srvs.get(name)
            ttl = self.owner.ttl
            known = addrs is not None or srvs is not None
            if q.qtype in (QTYPE.A, QTYPE.AAAA) and addrs is not None:
                for rr in self.owner.address_rrs(q.qname, addrs, q.qtype, ttl):
                    reply.add_answer(rr)
            elif q.qtype == QTYPE.SRV and srvs is not None:
                for prio, weight, port, target in srvs:
                    reply.add_answer(RR(q.qname, QTYPE.SRV, ttl=ttl,
                                        rdata=SRV(prio, weight, port, target)))
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class DnsServer:
    def __init__(self, host='127.0.0.1', port=None, ttl=1):
        self.host, self.ttl = host, ttl
        self.port = port or self._free_port(host)
        self.lock = threading.Lock()
        self.addrs, self.srvs, self.asked = {}, {}, {}
        self._servers = []

    @staticmethod
    def _free_port(host):
        # a port free for both UDP and TCP
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, 0))
                port = u.getsockname()[1]
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    try:
                        t.bind((host, port))
                    except OSError:
                        continue
                return port
        raise RuntimeError('no free port for the DNS server')

    @staticmethod
    def address_rrs(qname, addrs, qtype, ttl):
        for a in addrs:
            ip = ipaddress.ip_address(a)
            if ip.version == 4 and qtype == QTYPE.A:
                yield RR(qname, QTYPE.A, ttl=ttl, rdata=A(a))
            elif ip.version == 6 and qtype == QTYPE.AAAA:
                yield RR(qname, QTYPE.AAAA, ttl=ttl, rdata=AAAA(a))

    def start(self):
        logger = DNSLogger(log='-recv,-send,-request,-reply,-truncated,-error,-data',
                           prefix=False)
        resolver = _Resolver(self)
        for tcp in (False, True):
            srv = DNSServer(resolver, address=self.host, port=self.port, tcp=tcp,
                            logger=logger, handler=_Handler)
            srv.server.daemon_threads = True
            srv.start_thread()
            self._servers.append(srv)
        return self

    def stop(self):
        for srv in self._servers:
            srv.stop()
            srv.server.server_close()
        self._servers = []

    def set(self, name, addrs, ttl=None):
        """The A/AAAA records of name (a list of address texts; [] answers no address)."""
        with self.lock:
            self.addrs[_key(name)] = list(addrs)
            if ttl is not None:
                self.ttl = ttl

    def set_srv(self, name, records):
        """SRV records of name: [(priority, weight, port, target), ...]."""
        with self.lock:
            self.srvs[_key(name)] = list(records)

    def remove(self, name):
        with self.lock:
            self.addrs.pop(_key(name), None)
            self.srvs.pop(_key(name), None)

    def queries(self, name):
        with self.lock:
            return self.asked.get(_key(name), 0)

    def resolver(self, valid='1s', ipv6=False):
        return 'resolver %s:%d valid=%s ipv6=%s;' % (self.host, self.port, valid,
                                                     'on' if ipv6 else 'off')
