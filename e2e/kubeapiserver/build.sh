#!/usr/bin/env bash
# Builds the kube-apiserver of this tools module once and caches it:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/weft/kube-apiserver-<version>
# A cached binary is reused; set WEFT_KUBE_APISERVER_REBUILD=1 to rebuild.
# Prints the binary's path on stdout (everything else goes to stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go.mod")"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/weft"
out="$cache/kube-apiserver-$version"
if [ -x "$out" ] && [ -z "${WEFT_KUBE_APISERVER_REBUILD:-}" ]; then
	echo "$out"
	exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
mkdir -p "$cache"
echo "building kube-apiserver $version into $out (about 5 minutes on 2 cores)" >&2
start=$(date +%s)
tmp="$(mktemp "$cache/.kube-apiserver-XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
chmod 0755 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "built kube-apiserver $version in $(( $(date +%s) - start ))s" >&2
echo "$out"
