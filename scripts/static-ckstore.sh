#!/usr/bin/env bash
# scripts/static-ckstore.sh [debug|release]: links the ckstore binary so that it needs no Swift runtime,
# libzstd, libsqlite3 or libstdc++ on the machine that runs it, and no glibc newer than 2.28; prints its path.
# What `make wheel` ships, and what `make test` tests (swiftc emits the modules again for the changed linker flags and relinks: about 30 s, no full rebuild).
#
# - The Swift standard library and Foundation: SwiftPM's --static-swift-stdlib. The toolchain's static
#   Foundation does not name the archives it needs itself (CoreFoundation, its ICU, shims, collections), so
#   they are named here (zig's lld resolves them whatever their order).
# - zstd and SQLite: pkg-config files of our own point the system-library targets at a folder holding
#   only the static archives, which the linker then finds before the shared libraries.
# - libstdc++ (which Foundation's ICU needs) from the same folder, statically: GCC 12's carries symbol
#   versions (GLIBCXX_3.4.30) that older distributions lack.
# - glibc 2.28: `zig cc` (ziglang from PyPI) links against that release's symbol versions, as the linker
#   driver swiftc runs (scripts/wheel/link-with-zig, through -tools-directory); scripts/wheel/glibc-compat.c
#   wraps or defines the few newer symbols the static libraries reference.
set -euo pipefail

config=${1:-release}
case "$config" in debug|release) ;; *) echo "usage: $0 [debug|release]" >&2; exit 2 ;; esac
SWIFT=${SWIFT:-swift}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

static="$root/.build/static-libs"
mkdir -p "$static/pkgconfig"
archive() {
    local name=$1 found
    shift
    found=$(find "$@" -name "$name" 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$found" ] || { echo "static-ckstore: $name not found (install libzstd-dev, libsqlite3-dev and libstdc++-dev)" >&2; exit 1; }
    ln -sf "$found" "$static/"
}
archive libzstd.a /usr/lib /usr/lib64 /usr/local/lib
archive libsqlite3.a /usr/lib /usr/lib64 /usr/local/lib
archive libstdc++.a /usr/lib/gcc /usr/lib64 /usr/lib
for spec in libzstd:zstd sqlite3:sqlite3; do
    name=${spec%%:*} lib=${spec##*:}
    printf 'libdir=%s\nName: %s\nDescription: %s, static, for a self-contained ckstore\nVersion: 0\nLibs: -L${libdir} -l%s\nCflags:\n' \
        "$static" "$name" "$name" "$lib" > "$static/pkgconfig/$name.pc"
done

clang=$(dirname "$(readlink -f "$(command -v "$SWIFT")")")/clang
[ -x "$clang" ] || clang=clang
"$clang" -c -O2 -fPIC -Wall -Werror scripts/wheel/glibc-compat.c -o "$static/glibc-compat.o"
"$clang" -c -O2 -fPIC -Wall -Werror scripts/wheel/main.c -o "$static/main.o"

tools="$root/.build/wheel-tools"
if [ ! -x "$tools/bin/python" ] || ! "$tools/bin/python" -c "import ziglang" 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$tools" >&2
    "$tools/bin/pip" install -q ziglang==0.17.0 >&2
fi
mkdir -p "$static/driver"
ln -sf "$root/scripts/wheel/link-with-zig" "$static/driver/clang"

CKSTORE_STATIC="$static" CKSTORE_ZIG="$tools/bin/python -m ziglang" CKSTORE_GLIBC_FLOOR=2.28 \
PKG_CONFIG_PATH="$static/pkgconfig" "$SWIFT" build -c "$config" --product ckstore --static-swift-stdlib \
    -Xswiftc -tools-directory -Xswiftc "$static/driver" \
    -Xlinker -lCoreFoundation -Xlinker -l_FoundationICU -Xlinker -l_FoundationCShims -Xlinker -l_FoundationCollections \
    -Xlinker --wrap=hypot -Xlinker --wrap=hypotf -Xlinker --wrap=arc4random \
    -Xlinker --wrap=posix_spawn_file_actions_addchdir_np -Xlinker "$static/glibc-compat.o" >&2

echo "$("$SWIFT" build -c "$config" --show-bin-path)/ckstore"
