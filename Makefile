# shadowvm — the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
BIN := bin/shadowvm
FIX := fixtures

.PHONY: all deps build test typecheck demo bench clean fixtures qemu-colo install uninstall

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
	@node dist/bench/rtt-legs.js
	@node dist/bench/shard-scale.js
	@node dist/bench/shard-scale.js --offloads
	@node dist/bench/shard-filter-cost.js
	@gcc -O2 -pthread -o dist/bench/handoff-wake bench/handoff-wake.c && dist/bench/handoff-wake
	@node dist/bench/failover.js
	@node dist/bench/pipeline.js
	@node dist/bench/soak.js
	@node dist/bench/qemu-bench.js

# Re-records the fixtures from real servers in network namespaces (root).
fixtures: build
	@scripts/record-fixtures.sh

# Debian's QEMU 7.2 with shadowvm's COLO patches (two TCG fixes; RAM counters in COLO state),
# from qemu-colo/patches, built into
# /var/cache/shadowvm/qemu-colo/ (root; about 11 min on 2 cores; a no-op once built).
qemu-colo:
	@scripts/build-qemu-colo.sh

# Installs what `make build` made (no build here: `make && sudo make install`):
# dist/lib, bin, the native addons, README and the production npm packages into
# $(PREFIX); a $(BINDIR)/shadowvm link; the systemd units into $(UNITDIR), their
# paths rewritten for $(PREFIX). DESTDIR-aware. /etc/shadowvm is created, never filled.
PREFIX ?= /opt/shadowvm
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/shadowvm
UNITS := shadowvm@.service shadowvm-agent@.service
ADDONS := shadowvm_afpacket.node shadowvm_linkwatch.node shadowvm_peercred.node

install:
	@for f in dist/lib/cli/main.js $(addprefix build/Release/,$(ADDONS)); do \
	  [ -e "$$f" ] || { echo "make install: $$f is missing: run \`make build\` first" >&2; exit 1; }; done
	@[ -d node_modules ] || { echo "make install: node_modules is missing: run \`make deps\` first" >&2; exit 1; }
	install -d -m 0755 $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/build/Release $(DESTDIR)$(PREFIX)/node_modules $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR)
	install -d -m 0700 $(DESTDIR)$(CONFDIR)
	install -m 0755 bin/shadowvm $(DESTDIR)$(PREFIX)/bin/shadowvm
	install -m 0644 package.json README.md $(DESTDIR)$(PREFIX)/
	install -m 0755 $(addprefix build/Release/,$(ADDONS)) $(DESTDIR)$(PREFIX)/build/Release/
	rm -rf $(DESTDIR)$(PREFIX)/dist && mkdir -p $(DESTDIR)$(PREFIX)/dist && cp -R dist/lib $(DESTDIR)$(PREFIX)/dist/lib
	@# The production dependency tree only (npm's own list of it), copied from node_modules as built here.
	@set -e; root=$$(pwd -P); npm ls --omit=dev --parseable --all | tail -n +2 | while read -r dir; do \
	  rel=$${dir#"$$root"/}; rel=$${rel#"$(CURDIR)"/}; \
	  mkdir -p "$(DESTDIR)$(PREFIX)/$$rel"; cp -R "$$dir/." "$(DESTDIR)$(PREFIX)/$$rel/"; done
	ln -sfn $(PREFIX)/bin/shadowvm $(DESTDIR)$(BINDIR)/shadowvm
	@for u in $(UNITS); do \
	  sed -e 's|/opt/shadowvm|$(PREFIX)|g' -e 's|/etc/shadowvm|$(CONFDIR)|g' deploy/systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u; \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$u; echo "installed $(DESTDIR)$(UNITDIR)/$$u"; done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Removes what `install` put in place; configuration files in $(CONFDIR) stay (the folder goes only if empty).
uninstall:
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS))
	@if [ -L $(DESTDIR)$(BINDIR)/shadowvm ]; then rm -f $(DESTDIR)$(BINDIR)/shadowvm; fi
	rm -rf $(DESTDIR)$(PREFIX)
	@if [ -d $(DESTDIR)$(CONFDIR) ]; then rmdir --ignore-fail-on-non-empty $(DESTDIR)$(CONFDIR); fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf dist test-results.json
