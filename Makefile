# The two commands of the README:
#   make run    set everything up, then run the main job (embedded: no services needed)
#   make test   set everything up, then run every check CI runs
# Each target installs what it needs first (scripts/setup.sh is idempotent).

SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: help setup build run test lint fmt clean

help:
	@echo "make run    set up, build, start a coordinator + worker in one process"
	@echo "make test   set up, then fmt check, clippy, and the whole test suite"

setup:
	@./scripts/setup.sh

build: setup
	@$(ENV) cargo build --workspace --bins

run: build
	@$(ENV) ./target/debug/trainfleet run

test: setup
	@$(ENV) ./scripts/test.sh

lint: setup
	@$(ENV) cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
