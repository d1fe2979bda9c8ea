#!/usr/bin/env bash
# Make the demo CA and the bar.internal server certificate the default
# config's TLS demo backends use.  Demo only: the keys ship in the bundle.
#   gen-certs.sh DIR     (does nothing when DIR already has them)
set -euo pipefail
dir=${1:?usage: gen-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
[ -s ca.crt ] && [ -s bar.internal.crt ] && [ -s bar.internal.key ] && exit 0
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=nginx-portable demo CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=bar.internal" -keyout bar.internal.key -out bar.internal.csr 2>/dev/null
printf 'subjectAltName=DNS:bar.internal\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > bar.ext
openssl x509 -req -in bar.internal.csr -CA ca.crt -CAkey ca.key -set_serial 1 -days 3650 \
    -extfile bar.ext -out bar.internal.crt 2>/dev/null
rm -f bar.internal.csr bar.ext ca.key          # nobody needs to sign more
chmod 644 ca.crt bar.internal.crt
chmod 640 bar.internal.key
