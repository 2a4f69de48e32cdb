# Sourced by the Makefile: puts the tools of .tools and .venv on PATH for scripts and tests.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# LIBTORCH comes from .cargo/config.toml (.venv/libtorch, made by setup.sh).
export PROTOC="${PROTOC:-$(command -v protoc)}"
export PATH="$ROOT/.tools/node_modules/.bin:$ROOT/.venv/bin:$PATH"
export TRAINFLEET_TEST_PYTHON="$ROOT/.venv/bin/python"
