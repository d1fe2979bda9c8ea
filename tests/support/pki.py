"""A test CA and server certificates, made with the openssl CLI.

    pki = PKI(tmp_path / 'pki')                  # ca.key, ca.crt
    ctx = pki.server_context('bar.internal')     # leaf signed by the CA
    crt, key = pki.issue('good.test', stem='leaf')
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


def server_context(crt, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
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

    def issue(self, name, sans=None, stem=None):
        """A leaf for CN `name` (SANs: sans, else name) signed by this CA, in
        <stem>.crt and <stem>.key (stem defaults to name): (crt, key)."""
        stem = stem or name
        key, csr, crt, ext = (self.dir / (stem + x) for x in ('.key', '.csr', '.crt', '.ext'))
        ext.write_text('subjectAltName=%s\nbasicConstraints=CA:FALSE\n'
                       'extendedKeyUsage=serverAuth\n'
                       % ','.join('DNS:' + s for s in (sans or [name])))
        openssl('req', *EC_KEY, '-subj', '/CN=' + name, '-keyout', key, '-out', csr)
        openssl('x509', '-req', '-in', csr, '-CA', self.ca_crt, '-CAkey', self.ca_key,
                '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', crt)
        return crt, key

    def server_context(self, name, sans=None):
        return server_context(*self.issue(name, sans))

    def system_like_bundle(self, path):
        """The machine's CA bundle plus this CA: what SSL_CERT_FILE may point at."""
        system = pathlib.Path('/etc/ssl/certs/ca-certificates.crt')
        text = system.read_text() if system.exists() else ''
        pathlib.Path(path).write_text(text + self.ca_crt.read_text())
        return path
