#!/usr/bin/env bash
# The `make demo` walk-through: generate a small trainer-shaped checkpoint series, put it, list it,
# restore the newest and check it byte for byte, and show what dedup and compression saved.
set -euo pipefail
bin="$1"; demo="$2"
rm -rf "$demo"; mkdir -p "$demo"
store="$demo/store"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Generating 4 trainer-shaped checkpoints (model.safetensors, optimizer.pt, ...) of about 20 MiB each;"
echo "   embeddings and layers.0 are frozen, so part of every checkpoint repeats the one before."
"$bin/ckstore-gen" "$demo/run" --checkpoints 4 --parameters 2000000 --frozen embed. --frozen layers.0. >/dev/null
ls "$demo/run"

say "ckstore put (one per checkpoint; step, epoch and loss come from trainer_state.json)"
for dir in "$demo"/run/checkpoint-*; do
  id=$("$bin/ckstore" put --store "$store" "$dir" --run demo-finetune 2>"$demo/put.log")
  echo "${id:0:12}  $(cat "$demo/put.log")"
done

say "ckstore ls"
"$bin/ckstore" ls --store "$store"

say "ckstore show demo-finetune@latest"
"$bin/ckstore" show --store "$store" demo-finetune@latest

say "ckstore get demo-finetune@latest (every chunk and file verified), compared with the original"
latest=$(ls -d "$demo"/run/checkpoint-* | sort -t- -k2 -n | tail -1)
"$bin/ckstore" get --store "$store" demo-finetune@latest "$demo/restored"
diff -r "$latest" "$demo/restored" && echo "byte-for-byte identical to $latest"

say "ckstore verify --full (every frame read, decoded and re-hashed)"
"$bin/ckstore" verify --store "$store" --full

say "ckstore policy set demo-finetune --keep-last 2 --drop-optimizer-after 1; ckstore gc --dry-run"
"$bin/ckstore" policy set --store "$store" demo-finetune --keep-last 2 --drop-optimizer-after 1
"$bin/ckstore" gc --store "$store" --dry-run

say "ckstore audit --budget 1GiB --what-if keep-last=1 --html (what each checkpoint really costs)"
"$bin/ckstore" audit --store "$store" --budget 1GiB --what-if keep-last=1 --top 5 --html "$demo/audit.html"

say "Dedup and compression"
logical=$(du -sb "$demo/run" | cut -f1)
stored=$(du -sb "$store" | cut -f1)
echo "checkpoint folders: $((logical / 1048576)) MiB"
echo "store on disk:      $((stored / 1048576)) MiB ($((100 * stored / logical))% of the folders)"
echo "(frozen layers are stored once; trained float tensors barely compress with zstd alone)"
