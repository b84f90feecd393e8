# shadowvm — the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
BIN := bin/shadowvm
FIX := fixtures

.PHONY: all deps build test typecheck demo bench clean fixtures

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

# Replays recorded captures of real servers through the pipeline and prints the verdicts.
demo: build
	@echo "== nginx over one keep-alive connection: primary and backup agree"
	@$(BIN) replay --client $(FIX)/http-keepalive/client.pcap --primary $(FIX)/http-keepalive/primary.pcap --backup $(FIX)/http-keepalive/backup.pcap
	@echo
	@echo "== the same file differs between primary and backup: mismatch at the byte that differs"
	@$(BIN) replay --client $(FIX)/http-diverge/client.pcap --primary $(FIX)/http-diverge/primary.pcap --backup $(FIX)/http-diverge/backup.pcap

bench: build
	@node dist/bench/pipeline.js

# Re-records the fixtures from real servers in network namespaces (root).
fixtures: build
	@scripts/record-fixtures.sh

clean:
	rm -rf dist test-results.json
