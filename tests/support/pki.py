"""A test CA and server certificates, made with the openssl CLI.

    pki = PKI(tmp_path / 'pki')                  # ca.key, ca.crt
    ctx = pki.server_context('bar.internal')     # leaf signed by the CA
    crt, key = pki.issue('good.test', stem='leaf')
    crt, key = pki.issue('checker', usage='clientAuth')   # a client certificate
    ctx = pki.mtls_context('bar.internal')       # a server that wants a client cert of the CA
    PKI(tmp_path / 'pki', name='evilca')         # a second, untrusted CA beside it

The CA says so (basicConstraints CA:TRUE, keyCertSign) and a leaf says it is
one (CA:FALSE, serverAuth, its names as SAN DNS entries), so verification
fails only for the reason a test means.
"""
import pathlib
import ssl
import subprocess

EC_KEY = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes')


def openssl(*args, cwd=None):
    subprocess.run(['openssl', *map(str, args)], check=True, capture_output=True, cwd=cwd,
                   timeout=60)


def server_context(crt, key, client_ca=None):
    """A server context; with client_ca, clients must present a certificate
    that CA signed (mTLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(client_ca))
    return ctx


class PKI:
    def __init__(self, directory, name='ca'):
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key, self.ca_crt = self.dir / (name + '.key'), self.dir / (name + '.crt')
        openssl('req', '-x509', *EC_KEY, '-days', '2', '-subj', '/CN=nginx-portable test ' + name,
                '-addext', 'basicConstraints=critical,CA:TRUE',
                '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
                '-keyout', self.ca_key, '-out', self.ca_crt)

    def issue(self, name, sans=None, stem=None, usage='serverAuth'):
        """A leaf for CN `name` (SANs: sans, else name) signed by this CA, in
        <stem>.crt and <stem>.key (stem defaults to name): (crt, key).
        usage: its extendedKeyUsage (serverAuth, clientAuth)."""
        stem = stem or name
        key, csr, crt, ext = (self.dir / (stem + x) for x in ('.key', '.csr', '.crt', '.ext'))
        ext.write_text('subjectAltName=%s\nbasicConstraints=CA:FALSE\n'
                       'extendedKeyUsage=%s\n'
                       % (','.join('DNS:' + s for s in (sans or [name])), usage))
        openssl('req', *EC_KEY, '-subj', '/CN=' + name, '-keyout', key, '-out', csr)
        openssl('x509', '-req', '-in', csr, '-CA', self.ca_crt, '-CAkey', self.ca_key,
                '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', crt)
        return crt, key

    def server_context(self, name, sans=None):
        return server_context(*self.issue(name, sans))

    def mtls_context(self, name, sans=None):
        """A server for `name` that rejects clients without a certificate of this CA."""
        return server_context(*self.issue(name, sans), client_ca=self.ca_crt)

    def system_like_bundle(self, path):
        """The machine's CA bundle plus this CA: what SSL_CERT_FILE may point at."""
        system = pathlib.Path('/etc/ssl/certs/ca-certificates.crt')
        text = system.read_text() if system.exists() else ''
        pathlib.Path(path).write_text(text + self.ca_crt.read_text())
        return path
