# The two commands of the README:
#   make run    set everything up, then run the main job (embedded: no services needed)
#   make test   set everything up, then run every check CI runs
# Each target installs what it needs first (scripts/setup.sh is idempotent).

SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: help setup build run test lint fmt clean

help:
	@echo "make run    set up, build, show a coordinator + worker connected, train and verify the demo model"
	@echo "make test   set up, then fmt check, clippy, and the whole test suite"

setup:
	@./scripts/setup.sh

build: setup
	@$(ENV) cargo build --workspace --bins


# The embedded coordinator and a worker find each other; then the offline demo job trains on
# this machine and the saved model is verified. (Scheduling that job through the coordinator
# comes with the scheduler.)
# Trains synth-digits in the embedded cluster, evaluates it against the champion and records it.
# Run it twice: the second run is compared with the first run's model on the same test split.
run: build
	@$(ENV) ./target/debug/trainfleet run configs/synth-digits.yaml

test: setup
	@$(ENV) ./scripts/test.sh

lint: setup
	@$(ENV) cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
