#!/bin/sh
# Test TLS material for the gRPC transport tests (kept in the tree; nothing is generated at
# test time): a CA, a kernel certificate for localhost/127.0.0.1, a client certificate from the
# same CA, and an unrelated CA with its own client certificate. Valid for 100 years.
set -eu
out=packages/kernel/test/fixtures/tls
mkdir -p "$out"
cd "$out"
days=36500
gen_ca() { # name
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.pem" \
    -days $days -subj "/CN=kpip test $1" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
gen_cert() { # name ca extfile-content
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=kpip test $1" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" -days $days -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
gen_ca ca
gen_cert server ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
gen_cert client ca "extendedKeyUsage=clientAuth"
gen_ca other-ca
gen_cert other-client other-ca "extendedKeyUsage=clientAuth"
rm -f ./*.srl
chmod 600 ./*.key
echo "wrote $(ls | tr '\n' ' ')"
