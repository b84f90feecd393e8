# shadowvm — the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
BIN := bin/shadowvm
FIX := fixtures

.PHONY: all deps build test typecheck demo bench clean fixtures qemu-colo

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@npx tsc -p tsconfig.json

typecheck: deps
	@npx tsc -p tsconfig.json --noEmit

# Unit, property, replay and fuzz tests; integration tests need root (CI is root).
test: build
	@npx jest --ci --json --outputFile=test-results.json

# The main job on the built-in lab (root): real servers behind the bridge, a divergence, a checkpoint.
demo: build
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo builds network namespaces: run it as root (sudo make demo)"; exit 1; fi
	@$(BIN) lab demo --kind netns --log-level error
	@echo
	@echo "== the QEMU lab: two live VMs, the QEMU agent copying real state at every checkpoint"
	@$(BIN) lab demo --kind qemu --log-level error
	@echo
	@echo "== the same pipeline offline: replay of captures recorded from vsftpd in passive mode"
	@$(BIN) replay --client $(FIX)/ftp-pasv/client.pcap --primary $(FIX)/ftp-pasv/primary.pcap --backup $(FIX)/ftp-pasv/backup.pcap

# Side by side on the netns lab (root): kernel bridge, shadowvm with AF_PACKET, shadowvm with libpcap;
# then failover as the client sees it (abrupt and silent deaths); then the pipeline's own cost per frame;
# then the hostile-input soak (issue 7's attacks one after another while downloads run);
# then the thesis's headline comparison on the QEMU lab (no protection, shadowvm, periodic full-copy checkpoints).
# Reports, not tests; JSON under bench/results/.
bench: build
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench builds network namespaces: run it as root (sudo make bench)"; exit 1; fi
	@node dist/bench/lab-bench.js
	@node dist/bench/failover.js
	@node dist/bench/pipeline.js
	@node dist/bench/soak.js
	@node dist/bench/qemu-bench.js

# Re-records the fixtures from real servers in network namespaces (root).
fixtures: build
	@scripts/record-fixtures.sh

# Debian's QEMU 7.2 with shadowvm's two TCG fixes for COLO (qemu-colo/patches), built into
# /var/cache/shadowvm/qemu-colo/ (root; about 11 min on 2 cores; a no-op once built).
qemu-colo:
	@scripts/build-qemu-colo.sh

clean:
	rm -rf dist test-results.json
