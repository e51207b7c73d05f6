#!/bin/sh
# Regenerates vectors.txt: tokens signed by OpenSSL (not by the Rust crates the plugin
# uses), so the tests check the plugin against an independent implementation.
# Run from this directory. Test-only keys: never use them for anything else.
set -eu
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
claims='{"sub":"alice","iss":"https://id.example.com","aud":"api","exp":1700003600,"nbf":1699999000}'
secret='an-hs256-test-secret-of-32-bytes!'
for alg in HS256 RS256 ES256; do
  header=$(printf '{"alg":"%s","typ":"JWT","kid":"%s"}' "$alg" "openssl-$alg" | b64url)
  payload=$(printf '%s' "$claims" | b64url)
  input="$header.$payload"
  case $alg in
    HS256) sig=$(printf '%s' "$input" | openssl dgst -sha256 -mac HMAC -macopt "key:$secret" -binary | b64url) ;;
    RS256) sig=$(printf '%s' "$input" | openssl dgst -sha256 -sign rsa-private.pem -binary | b64url) ;;
    # OpenSSL writes an ECDSA signature as DER; JWS wants r || s, 32 bytes each.
    ES256) sig=$(printf '%s' "$input" | openssl dgst -sha256 -sign ec-private.pem -binary |
             openssl asn1parse -inform DER | awk -F: '/INTEGER/ {printf "%064s", $NF}' | tr ' ' 0 |
             xxd -r -p | b64url) ;;
  esac
  echo "$alg $input.$sig"
done > vectors.txt
