#!/usr/bin/env bash
# Throwaway certificates for TLS tests: a CA of their own, a server
# certificate for localhost and a client certificate, both signed by it.
# Nothing here is fit for production: the keys are not encrypted and the
# CA is thrown away with DIR.
#
#   scripts/tls-certs.sh DIR
#
# Writes into DIR (created when missing):
#   ca.pem, ca.key           the CA (CN=kiln test CA <random>)
#   server.pem, server.key   CN=localhost, subjectAltName DNS:localhost,
#                            IP:127.0.0.1; for scripts/rabbitmq.sh with
#                            KILN_RMQ_TLS_DIR=DIR
#   client.pem, client.key   CN=kiln-client, for TLS client authentication
#   other.pem, other.key     CN=other.invalid, subjectAltName
#                            DNS:other.invalid only: a server certificate
#                            of the same CA for another host, for testing
#                            host name checks
# Each run makes a new CA, so two directories never trust each other.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:?usage: scripts/tls-certs.sh DIR}
days=30

command -v openssl >/dev/null 2>&1 || "$top/scripts/install-deps.sh" openssl
mkdir -p "$dir"
cd "$dir"
umask 077

# One key and a CSR for `cn`, then a certificate signed by the CA with the
# extensions in the file `ext`.
issue() {
    local name=$1 cn=$2 ext=$3
    openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" \
        -subj "/CN=$cn/O=kiln tests" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key \
        -CAcreateserial -days "$days" -sha256 -extfile "$ext" \
        -out "$name.pem" 2>/dev/null
    rm -f "$name.csr"
}

openssl req -x509 -new -newkey rsa:2048 -nodes -keyout ca.key -days "$days" \
    -sha256 -subj "/CN=kiln test CA $(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')/O=kiln tests" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem 2>/dev/null

cat >server.ext <<'EXT'
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EXT
cat >client.ext <<'EXT'
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EXT
cat >other.ext <<'EXT'
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:other.invalid
EXT
issue server localhost server.ext
issue client kiln-client client.ext
issue other other.invalid other.ext
rm -f server.ext client.ext other.ext ca.srl
# The broker runs as this user and reads the keys; others need not.
chmod 600 ./*.key
chmod 644 ./*.pem
