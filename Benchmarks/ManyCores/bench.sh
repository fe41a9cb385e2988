#!/bin/bash
# Issue 18's many-core measurement (docs/benchmarks.md, "Many cores"). Makes a series of ~1 GB GPT
# checkpoints on the machine with its PyTorch (Benchmarks/RealSeries/gpt_series.py, on its GPU), then times
# ckstore put and get, with restic side by side, at 16, 8, 4, 2 and 1 cores (taskset), the series and the
# store in tmpfs (page cache warm, no disk), and again with the store on disk.
#
#   Benchmarks/ManyCores/bench.sh CARRY
#
# CARRY holds what the machine lacks: ckstore.xz (a release build with --static-swift-stdlib, stripped),
# lib/libzstd.so.1 and lib/libsqlite3.so.0 (for ckstore alone), restic.gz (Debian's static binary).
# Environment: OUT (results.txt goes there), CORES ("16 8 4 2 1"), PY (python3), SERIES_ARGS, and
# SERIES_DIR to measure an existing series instead (the 1- and 2-core scaling on this project's machine:
# SERIES_DIR=/tmp/ckstore-compare/real-fp32 CORES="2 1"), and PREDICT (core counts at which to measure
# a store with `--predict-weights on` too, in tmpfs; none by default).
set -u
D=$(cd "${1:?usage: bench.sh CARRY}" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
W=/dev/shm/ck
rm -rf $W; mkdir -p $W/bin $W/lib
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" $D/ckstore.xz $W/bin/ckstore.real; gunzip -c $D/restic.gz > $W/bin/restic
cp $D/lib/* $W/lib/
# The carried libzstd and libsqlite3 for ckstore alone: PyTorch keeps the system's libraries.
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' $W/lib $W/bin/ckstore.real > $W/bin/ckstore
chmod +x $W/bin/*
CK=$W/bin/ckstore; RESTIC=$W/bin/restic
R=${OUT:-/tmp}/results.txt
log() { echo "$*" | tee -a $R; }
log "machine: $(nproc) cpus; $(grep -m1 'model name' /proc/cpuinfo); sha_ni $(grep -m1 -c sha_ni /proc/cpuinfo); $(uname -r)"
log "topology: cpu0 shares a core with $(cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list 2>/dev/null), cpu1 with $(cat /sys/devices/system/cpu/cpu1/topology/thread_siblings_list 2>/dev/null)"
df -h /dev/shm /tmp | tee -a $R
$CK --version | tee -a $R
if [ -n "${SERIES_DIR:-}" ]; then
  SERIES=$SERIES_DIR   # an existing series of checkpoint-N folders (make real-series), measured in place
  log "series $SERIES: $(du -sh $SERIES | cut -f1)"
else
  SERIES=$W/series
  t0=$(date +%s.%N)
  ${PY:-python3} $REPO/Benchmarks/RealSeries/gpt_series.py $SERIES ${SERIES_ARGS:---checkpoints 4 --every 5} 2>&1 | grep -v Warning | tail -5
  log "series made in $(python3 -c "import sys; print(round($(date +%s.%N) - $t0, 1))") s: $(du -sh $SERIES | cut -f1)"
fi
ls -la $(ls -d $SERIES/checkpoint-* | head -1) | tee -a $R
# In step order: by the number after the last dash (a plain sort put checkpoint-100 before checkpoint-20,
# and sorting on the second dash-separated field did the same for a series folder with a dash in its path).
CKPTS=$(ls -d $SERIES/checkpoint-* | awk -F- '{print $NF "\t" $0}' | sort -n | cut -f2)
NEWEST=$(echo "$CKPTS" | tail -1)
cat $SERIES/*/* > /dev/null
# measure LABEL CMD...: wall seconds and the child's peak RSS (MiB)
measure() {
  local label=$1; shift
  python3 -c '
import resource, subprocess, sys, time
t = time.perf_counter(); r = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{sys.argv[1]} {dt:.3f} s rss {rss:.0f} MiB rc {r.returncode}", r.stderr.decode()[-300:] if r.returncode else "")
trace = [line for line in r.stderr.decode().splitlines() if line.startswith("trace ")]
if trace: print("   " + " | ".join(line.split(": ", 1)[1] for line in trace))
' "$label" "$@" | tee -a $R
}
run_ckstore() {  # cores storeroot [init options…]
  local c=$1 root=$2 cpus="0-$(($1-1))" name=ckstore; shift 2
  [ $# -gt 0 ] && name="ckstore$(echo "$*" | tr -d ' -')"
  rm -rf $root/store; $CK init --store $root/store "$@" >/dev/null
  for k in $CKPTS; do CKSTORE_TRACE=1 measure "$name cores=$c at=$root put $(basename $k)" taskset -c $cpus $CK put $k --store $root/store --run gpt; done
  for i in 1 2 3; do rm -rf $root/out; CKSTORE_TRACE=1 measure "$name cores=$c at=$root get newest #$i" taskset -c $cpus $CK get gpt@latest $root/out --store $root/store; done
  cmp $root/out/optimizer.pt $NEWEST/optimizer.pt && cmp $root/out/model.safetensors $NEWEST/model.safetensors && log "$name cores=$c restored newest byte-exact"
  log "$name cores=$c stored $(du -sb $root/store | cut -f1) bytes"
  rm -rf $root/out
}
run_restic() {
  local c=$1 root=$2 cpus="0-$(($1-1))"
  export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$root/restic-cache
  rm -rf $root/restic $root/restic-cache; $RESTIC init --repo $root/restic -q
  for k in $CKPTS; do measure "restic cores=$c at=$root put $(basename $k)" taskset -c $cpus $RESTIC -r $root/restic backup -q $k; done
  for i in 1 2 3; do rm -rf $root/out; measure "restic cores=$c at=$root get newest #$i" taskset -c $cpus $RESTIC -r $root/restic restore latest --target $root/out -q; done
  log "restic cores=$c stored $(du -sb $root/restic | cut -f1) bytes"
  rm -rf $root/out $root/restic $root/restic-cache
}
mkdir -p /tmp/ck
ALL=${CORES:-16 8 4 2 1}; MOST=$(echo $ALL | cut -d' ' -f1)
for c in $ALL; do run_ckstore $c $W; done
for c in ${PREDICT:-}; do run_ckstore $c $W --predict-weights on; done
run_ckstore $MOST /tmp/ck
run_ckstore 2 /tmp/ck
run_restic $MOST $W
run_restic 2 $W
log done
