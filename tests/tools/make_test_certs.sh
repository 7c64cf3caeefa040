#!/usr/bin/env bash
# Makes throw-away certificates for the TLS tests and the TLS benchmark, with
# the openssl command-line tool, into DIR (which must exist):
#
#   ca.pem ca.key                  a test CA
#   server.pem server.key          CN=localhost, subjectAltName IP:127.0.0.1 and DNS:localhost,
#                                  signed by the CA, serial 1001
#   server2.pem server2.key        the same names, another key, serial 1002 (the reload test's swap)
#   client-NAME.pem client-NAME.key  one client certificate per CN given, signed by the CA
#   other-ca.pem other-ca.key      a second CA, which the proxy does not trust
#   other-client.pem other-client.key  signed by the second CA; CN = the first CN given
#
#   tests/tools/make_test_certs.sh DIR [CLIENT_CN...]
#
# P-256 keys (quick to make), valid for two days. Nothing here is a secret
# worth keeping: the files live in a test's temporary directory.
set -euo pipefail
dir=$1
shift
cd "$dir"
openssl=${OPENSSL:-openssl}
days=2

key() { "$openssl" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() {  # ca NAME CN
  key "$1.key"
  "$openssl" req -x509 -new -key "$1.key" -out "$1.pem" -days "$days" -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() {  # leaf NAME CN CA SERIAL EXTENSIONS
  key "$1.key"
  "$openssl" req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" "$5" \
    >"$1.ext"
  "$openssl" x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -set_serial "$4" -days "$days" \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

server_ext="subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
client_ext="extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"

ca ca "workflow-proxy test CA"
leaf server localhost ca 0x1001 "$server_ext"
leaf server2 localhost ca 0x1002 "$server_ext"
serial=0x2001
for cn in "$@"; do
  leaf "client-$cn" "$cn" ca "$serial" "$client_ext"
  serial=$((serial + 1))
done
ca other-ca "another test CA"
leaf other-client "${1:-someone}" other-ca 0x3001 "$client_ext"
chmod 600 ./*.key
