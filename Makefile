# The two commands of the README:
#   make run    set everything up, then run the main job (embedded: no services needed)
#   make test   set everything up, then run every check CI runs
# Each target installs what it needs first (scripts/setup.sh is idempotent).

SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: help setup build run train test lint fmt clean images

help:
	@echo "make run    set up, build, then trainfleet demo: the retrain loop on growing synth-digits data"
	@echo "make test   set up, then fmt check, clippy, and the whole test suite"

setup:
	@./scripts/setup.sh

build: setup
	@$(ENV) cargo build --workspace --bins


# The retrain loop on one machine: an embedded coordinator and worker, a synth-digits folder that
# grows from 50 % to 100 %, scheduled scans, retrains, gate verdicts, the champion's lineage.
run: build
	@$(ENV) ./target/debug/trainfleet demo

# One training job through the embedded cluster, compared with the champion of earlier runs.
train: build
	@$(ENV) ./target/debug/trainfleet run configs/synth-digits.yaml

# The coordinator and worker images, built offline from the release binaries (scripts/images.sh).
images: setup
	@$(ENV) ./scripts/images.sh

test: setup
	@$(ENV) ./scripts/test.sh

lint: setup
	@$(ENV) cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
