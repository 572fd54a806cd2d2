# The two commands: `make run` and `make test`. CI runs exactly `make test` (.ci/run).
CARGO ?= cargo
ARGS ?=
# make dist: where the release directory goes, and the cargo profile (dev for a quick local try).
DIST ?= dist
PROFILE ?= release
PROFILE_DIR = $(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
DEPLOY_CONFIG ?= deploy.toml

.PHONY: run test lint peers build bench faults clean dist deploy install

# make run: the cargo profile. dev builds in ~1.5 min on 2 cores from a fresh clone (release,
# with LTO, takes ~15 min): right for trying it; `make run RUN_PROFILE=release` to measure it.
RUN_PROFILE ?= dev
RUN_DIR = $(if $(filter dev,$(RUN_PROFILE)),debug,$(RUN_PROFILE))

## run: build and start usersvc on 127.0.0.1:8080 with ./usersvc.db (created on first run)
# --workspace --bins, as `make build`: one feature set, so make run after make test (or a test
# running make run) rebuilds nothing and never replaces a binary another process is starting.
run:
	$(CARGO) build --profile $(RUN_PROFILE) --workspace --bins
	target/$(RUN_DIR)/usersvc $(ARGS)

## test: install missing test peers (as root), lint, then the whole suite against real peers
test: peers lint build
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

## peers: install the Debian packages the tests' real peers come from
peers:
	./testbed/install-peers.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Tests of one crate start other crates' binaries: build them all first.
build:
	$(CARGO) build --workspace --bins

## dist: assemble $(DIST)/, one release directory: bin/ (usersvc, check_jsonrpc, riemann-probe),
## the systemd units, the usersvc.toml example, Nagios/Icinga 2 definitions and riemann.config.
## Built aside and renamed into place, so a half-built dist/ is never deployed.
# --workspace --bins, as `make build`: one feature set, so a test or a deploy after it rebuilds nothing.
dist:
	$(CARGO) build --profile $(PROFILE) --workspace --bins
	rm -rf $(DIST).tmp && mkdir -p $(DIST).tmp/bin
	cp target/$(PROFILE_DIR)/usersvc target/$(PROFILE_DIR)/check_jsonrpc \
	   target/$(PROFILE_DIR)/riemann-probe $(DIST).tmp/bin/
	cp -R packaging/systemd packaging/nagios packaging/icinga2 $(DIST).tmp/
	mkdir -p $(DIST).tmp/riemann && cp packaging/riemann/riemann.config $(DIST).tmp/riemann/
	cp packaging/usersvc.toml $(DIST).tmp/usersvc.toml
	rm -rf $(DIST) && mv $(DIST).tmp $(DIST)

# make install: where to (DESTDIR stages it for a package, as every Makefile's install does).
PREFIX ?= /usr/local
DESTDIR ?=
TOOLS = usersvc check_jsonrpc deployer riemann-probe
DOCS = target/install-docs

## install: build ($(PROFILE)) and install the four tools in $(DESTDIR)$(PREFIX)/bin, their man
## pages in share/man/man1 and their bash, zsh and fish completions where those shells look
install:
	$(CARGO) build --profile $(PROFILE) --workspace --bins
	rm -rf $(DOCS) && mkdir -p $(DOCS)/man
	set -e; for t in $(TOOLS); do \
	  target/$(PROFILE_DIR)/$$t man-pages $(DOCS)/man; \
	  target/$(PROFILE_DIR)/$$t completions bash > $(DOCS)/$$t.bash; \
	  target/$(PROFILE_DIR)/$$t completions zsh > $(DOCS)/_$$t; \
	  target/$(PROFILE_DIR)/$$t completions fish > $(DOCS)/$$t.fish; \
	  install -D -m 0755 target/$(PROFILE_DIR)/$$t $(DESTDIR)$(PREFIX)/bin/$$t; \
	  install -D -m 0644 $(DOCS)/$$t.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$t; \
	  install -D -m 0644 $(DOCS)/_$$t $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_$$t; \
	  install -D -m 0644 $(DOCS)/$$t.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/$$t.fish; \
	done
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0644 $(DOCS)/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/

## deploy: ship $(DIST)/ with the deployer, as $(DEPLOY_CONFIG) says (example: packaging/deploy.toml)
deploy:
	@test -f $(DEPLOY_CONFIG) || { echo "no $(DEPLOY_CONFIG): cp packaging/deploy.toml $(DEPLOY_CONFIG) and edit its hosts" >&2; exit 1; }
	$(CARGO) build --profile $(PROFILE) --workspace --bins
	target/$(PROFILE_DIR)/deployer -c $(DEPLOY_CONFIG) deploy

## bench: side-by-side benchmarks against peers; prints ratios (ours/peer)
bench: peers
	./bench/run.sh

## faults: the seeded fault-schedule test with its checker, longer than make test runs it:
## FAULTS_SEED (default: the clock) and FAULTS_SECS (default 120); a failure names its seed
faults: peers build
	./bench/faults.sh

clean:
	$(CARGO) clean
	rm -rf $(DIST) $(DIST).tmp
