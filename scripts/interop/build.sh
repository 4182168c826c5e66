#!/usr/bin/env bash
# Builds llama.cpp (the copy the llama-cpp-python sdist carries, from the package index) and the
# auralens-logits tool into a cache, reused by later runs: $AURALENS_CACHE or ~/.cache/auralens,
# folder llama.cpp-<version>.  Prints the path of the tool.  Usage: build.sh PYTHON [JOBS]
set -euo pipefail
PY=${1:?python}; JOBS=${2:-2}; V=0.3.36
HERE=$(cd "$(dirname "$0")" && pwd)
C=${AURALENS_CACHE:-$HOME/.cache/auralens}/llama.cpp-$V
BIN=$C/build/auralens-logits
mkdir -p "$C"
if [ ! -f "$C/src/CMakeLists.txt" ]; then
  rm -rf "$C/dl" "$C/src"; mkdir -p "$C/dl"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: "llama-cpp-python==$V" -d "$C/dl" >&2
  tar xzf "$C/dl/llama_cpp_python-$V.tar.gz" -C "$C/dl"
  mv "$C/dl/llama_cpp_python-$V/vendor/llama.cpp" "$C/src"
  rm -f "$C/src/.git"  # a submodule pointer to a folder the sdist lacks (ninja would never settle)
  rm -rf "$C/dl"
fi
if [ ! -f "$C/build/build.ninja" ]; then
  cmake -S "$HERE" -B "$C/build" -G Ninja -DLLAMA_SRC="$C/src" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DGGML_CCACHE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >&2
fi
nice -n 10 ninja -C "$C/build" -j "$JOBS" auralens-logits >&2
# repeng (pure Python wheel, read from the zip by check.py) to check its import_gguf reads our files
R=${AURALENS_CACHE:-$HOME/.cache/auralens}/repeng
[ -f "$R/repeng-0.4.0-py3-none-any.whl" ] || "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
  repeng==0.4.0 -d "$R" >&2
echo "$BIN"
