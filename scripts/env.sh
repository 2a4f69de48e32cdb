# Sourced by the Makefile: points cargo at the libtorch inside .venv and the tools in .tools.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LIBTORCH="$(PYTHONWARNINGS=ignore "$ROOT/.venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
export LIBTORCH_CXX11_ABI=1
export PROTOC="${PROTOC:-$(command -v protoc)}"
export PATH="$ROOT/.tools/node_modules/.bin:$ROOT/.venv/bin:$PATH"
export TRAINFLEET_TEST_PYTHON="$ROOT/.venv/bin/python"
