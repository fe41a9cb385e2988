#!/usr/bin/env bash
# scripts/wheel/check-on-bullseye.sh WHEEL [ROOT]: installs the wheel into a virtual environment inside a
# Debian 11 (bullseye, glibc 2.31, Python 3.9) root made by debootstrap, and runs ckstore there: its
# version, which binary the package runs, and a put, list and get through the Python package, byte for
# byte. Run by hand as root (debootstrap and chroot); docs/dependencies.md reports what it printed.
set -euo pipefail
wheel=$(readlink -f "$1")
root=${2:-/tmp/ckstore-bullseye}
if [ ! -x "$root/usr/bin/python3" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
    debootstrap --variant=minbase --include=python3,python3-venv bullseye "$root" http://deb.debian.org/debian
fi
cp "$wheel" "$root/tmp/"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root /bin/bash -euc "
    cat /etc/debian_version; ldd --version | head -n 1; python3 --version
    rm -rf /opt/env /tmp/ck && python3 -m venv /opt/env
    /opt/env/bin/pip install -q --no-index /tmp/$(basename "$wheel")
    export PATH=/opt/env/bin:/usr/bin:/bin
    ckstore --version
    mkdir -p /tmp/ck/src && head -c 3000000 /dev/urandom > /tmp/ck/src/weights.bin && echo '{}' > /tmp/ck/src/config.json
    python - <<'PY'
import ckstore, filecmp
print(ckstore.binary_info())
store = ckstore.Store('/tmp/ck/store', create=True)
put = store.put('/tmp/ck/src', run='old-glibc', step=1)
print('put', put.id[:12], put.logical_bytes, 'bytes')
print('ls', [(c.run, c.step) for c in store.ls()])
store.get('old-glibc@1', '/tmp/ck/out')
same = filecmp.cmpfiles('/tmp/ck/src', '/tmp/ck/out', ['weights.bin', 'config.json'], shallow=False)[0]
assert same == ['weights.bin', 'config.json'], same
print('restored byte for byte:', same)
PY
    ckstore verify --full --store /tmp/ck/store
"
