#!/usr/bin/env bash
# deps.sh - install the Debian packages halflife needs, if any is missing.
# Runs apt-get as root, or through sudo; prints what it installs and why.
set -eu
pkgs="build-essential pkg-config clang librdkafka-dev libavro-dev libopenblas-dev
libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev kcat python3 python3-confluent-kafka python3-avro python3-numpy
prometheus docker-compose"
command -v npm >/dev/null 2>&1 || pkgs="$pkgs nodejs npm"
# Any kubectl with kustomize will do; Debian's kubernetes-client cannot be
# installed over another package's /usr/bin/kubectl (dpkg refuses).
command -v kubectl >/dev/null 2>&1 || pkgs="$pkgs kubernetes-client"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing missing Debian packages:$missing"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "deps: not root and no sudo; install these packages and run again:$missing" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends $missing
