#!/usr/bin/env bash
# A throwaway CA and a broker certificate for the compose file's SASL_SSL
# listeners (valid for localhost, 127.0.0.1 and the broker service names).
# Development only: the key is left readable by the container's user.
#
#   localstack/make-certs.sh [DIR]      # writes DIR (default localstack/certs)/{ca,server}.pem, server.key
set -euo pipefail
dir="${1:-$(cd "$(dirname "$0")" && pwd)/certs}"
mkdir -p "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 365 \
    -subj "/CN=Tributary development CA" 2>/dev/null
openssl req "${ec[@]}" -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:broker-1,DNS:broker-2\n' >"$dir/san.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.pem" -days 365 -extfile "$dir/san.ext" 2>/dev/null
chmod 644 "$dir/server.key"
rm -f "$dir/server.csr" "$dir/san.ext"
echo "CA: $dir/ca.pem (clients: ssl.ca.location); broker: $dir/server.pem, $dir/server.key"
