#!/usr/bin/env bash
# `make fuzz`: build the libFuzzer targets in Fuzz/ with AddressSanitizer and run each for FUZZ_SECONDS
# (default 60) on a seed corpus made from real files: Tests/Fixtures/real and the packs of a fresh store.
# A crash leaves its input in Fuzz/work/crashes/ and makes this script fail; turn it into a test in
# Tests/CKStoreTests/FuzzRegressionTests.swift.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
fixtures="$PWD/Tests/Fixtures/real"
work="Fuzz/work"
flags=(-c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld)
(cd Fuzz && swift build "${flags[@]}")
bin="$(cd Fuzz && swift build "${flags[@]}" --show-bin-path)"

mkdir -p "$work/crashes" "$work/corpus/safetensors" "$work/corpus/torchzip" "$work/corpus/pack" "$work/corpus/dcp"
if [ -d "$fixtures" ]; then
  find "$fixtures" -name '*.safetensors' -exec cp {} "$work/corpus/safetensors/" \;
  i=0; for f in $(find "$fixtures" -name '*.pt' -o -name '*.pth'); do cp "$f" "$work/corpus/torchzip/seed-$i"; i=$((i+1)); done
  i=0; for f in $(find "$fixtures/dcp" -name '*.distcp' -o -name '.metadata'); do cp "$f" "$work/corpus/dcp/seed-$i"; i=$((i+1)); done
  swift build >/dev/null
  rm -rf "$work/seed-store"
  # Both checkpoints, predicting weights: the second holds predicted frames, whose payloads name inputs.
  "$(swift build --show-bin-path)/ckstore" init --store "$work/seed-store" --predict-weights on >/dev/null
  for step in 2 4; do "$(swift build --show-bin-path)/ckstore" put --store "$work/seed-store" "$fixtures/hf-tiny/checkpoint-$step" --run seed >/dev/null; done
  find "$work/seed-store/packs" -name '*.pack' -exec cp {} "$work/corpus/pack/" \;
fi

status=0
for target in Safetensors:safetensors TorchZip:torchzip Pack:pack DCP:dcp; do
  name="${target%%:*}"; corpus="${target##*:}"
  echo "== Fuzz$name for ${seconds}s"
  if ! "$bin/Fuzz$name" -max_total_time="$seconds" -max_len=65536 -artifact_prefix="$work/crashes/$corpus-" "$work/corpus/$corpus"; then
    echo "Fuzz$name found a crash: see $work/crashes/"; status=1
  fi
done
exit $status
