#!/usr/bin/env bash
# Fetches libtorch 2.11.0 once, from PyPI's torch==2.11.0 wheel (with the CUDA runtime
# wheels it links against), into .deps/torch-venv, and reuses it afterwards.
# Everything that builds against libtorch finds it through .cargo/config.toml.
# Also installs Debian's libgloo-dev when /usr/include/gloo is missing: the torch wheel ships
# c10d's headers and its compiled Gloo, but not Gloo's own headers, which host/build.rs needs
# to compile the c10d binding (host/csrc/c10d_shim.cpp).
# pylibjpeg and its libjpeg/openjpeg plugins let pydicom decode the compressed DICOM syntaxes,
# and imagecodecs writes them, for the tests that compare our decoding with pydicom's.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -f /usr/include/gloo/config.h ]; then
  echo "ssl-host: installing Gloo's headers (Debian's libgloo-dev) for the c10d binding" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get install -y libgloo-dev >/dev/null 2>&1 ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y libgloo-dev >/dev/null; }
fi
# cmake and nasm build libjpeg-turbo and CharLS from their crates' bundled sources (the DICOM
# JPEG, JPEG-LS codecs of plugins/builtin-datasets).
if ! command -v cmake >/dev/null || ! command -v nasm >/dev/null; then
  echo "ssl-host: installing cmake and nasm (Debian) to build the DICOM codecs" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get install -y cmake nasm >/dev/null 2>&1 ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y cmake nasm >/dev/null; }
fi
# With --test-servers (scripts/test passes it): the object-storage servers that the storage
# tests start (host/tests/storage.rs): Azurite, the Azure Storage emulator (npm), and moto's S3
# server (PyPI: its s3 extra and the Flask its server mode needs), pinned, in .deps/emulators
# under their own marker, so they are added even when libtorch is already there (about a
# minute, 0.5 GB, once). Without npm the rest of the set-up still works; only those tests fail,
# saying to install Node.js and rerun the tests.
emulators="$root/.deps/emulators"
if [ "${1:-}" = "--test-servers" ] && [ ! -f "$emulators/.ready-v1" ]; then
  mkdir -p "$emulators"
  if command -v npm >/dev/null; then
    echo "ssl-host: installing the storage test servers (Azurite, moto) into .deps/emulators" >&2
    npm install --silent --no-audit --no-fund --omit=dev --prefix "$emulators" azurite@3.37.0 >/dev/null
    [ -x "$emulators/venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$emulators/venv"
    "$emulators/venv/bin/python" -m pip install --quiet --no-cache-dir --progress-bar off \
      "moto[s3]==5.2.6" flask==3.1.3 flask-cors==6.0.5
    touch "$emulators/.ready-v1"
  else
    echo "ssl-host: npm not found: the storage tests need Azurite (npm); install Node.js" >&2
  fi
fi
venv="$root/.deps/torch-venv"
# Bump the marker when the package list changes; an existing venv is then topped up.
marker="$venv/.ssl-host-ready-v8"
if [ -f "$marker" ]; then
  exit 0
fi
python=${PYTHON:-python3}
echo "ssl-host: first set-up: downloading torch==2.11.0 from PyPI into .deps/torch-venv" >&2
echo "ssl-host: (about 4.6 GB with its CUDA libraries; 1-3 minutes on a fast link; done once)" >&2
mkdir -p "$root/.deps"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --no-cache-dir --progress-bar off \
  torch==2.11.0 torchvision==0.26.0 numpy pillow tensorboard pydicom==3.0.1 safetensors==0.8.0 \
  pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0 imagecodecs==2026.3.6 \
  webdataset==1.0.2 scikit-learn==1.7.2
# The CUDA compiler's crt/ headers and CCCL's nv/target, for CUDA 13.0 as the torch wheel: the
# headers ProcessGroupNCCL.hpp needs, so that host/build.rs compiles the NCCL process group in
# (headers only, 3 MB; nothing here needs a GPU).
"$venv/bin/python" -m pip install --quiet --no-cache-dir --progress-bar off \
  nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
"$venv/bin/python" -W ignore - <<'PY'
import torch, os
assert torch.__version__.startswith("2.11.0"), torch.__version__
lib = os.path.join(os.path.dirname(torch.__file__), "lib")
assert os.path.exists(os.path.join(lib, "libtorch_cpu.so")), lib
PY
# A stable path for build scripts and rpaths, independent of the Python minor version.
site="$("$venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
# Relative, so that it stays right when .deps is shared with a git worktree by a symlink.
ln -sfn "$(realpath --relative-to="$root/.deps" "$site")" "$root/.deps/libtorch"
touch "$marker"
echo "ssl-host: libtorch ready at .deps/libtorch" >&2
