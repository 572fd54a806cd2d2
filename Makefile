# The two commands: `make run` and `make test`. CI runs exactly `make test` (.ci/run).
CARGO ?= cargo
ARGS ?=

.PHONY: run test lint peers build bench clean

## run: build and start usersvc on 127.0.0.1:8080 with ./usersvc.db (created on first run)
run:
	$(CARGO) run --release -p service --bin usersvc -- $(ARGS)

## test: install missing test peers (as root), lint, then the whole suite against real peers
test: peers lint build
	$(CARGO) test --workspace --all-targets

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

## bench: side-by-side benchmarks against peers; prints ratios (ours/peer)
bench: peers
	./bench/run.sh

clean:
	$(CARGO) clean
