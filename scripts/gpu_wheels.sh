#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with the Python packages scripts/gpu_check.sh needs on the lent GPU machine that its image
# lacks: Python 3.12, x86-64, torch 2.11 / lightning / transformers already there, no network. They travel with the
# call (`carry: [".whl"]`), 64 MiB per call together with the source tree, and gpu_check.sh installs them into
# /tmp/site there (`pip install --no-index --no-deps --target`).
#
#   bash scripts/gpu_wheels.sh                                  # python3 with pip; deepspeed needs torch in it:
#   PY=/work/main/.venv/bin/python bash scripts/gpu_wheels.sh   # the project's venv (pip wheel installs nothing)
#
# Versions are the ones this project is developed and tested with. timm is on the machine too, at a version of its
# own: ours is carried because models/swinv2.py extends timm's SwinV2 blocks through their internals.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=.whl
mkdir -p "$DEST"

# Binary and pure-Python wheels published on PyPI, for CPython 3.12 on manylinux x86-64 (the device README's recipe).
WHEELS=(
  hydra-core==1.3.8 omegaconf==2.3.1                      # configuration (antlr4 below)
  webdataset==1.0.2 braceexpand==0.1.7                    # data/shards.py
  simplejpeg==1.9.0                                       # data/decode.py
  timm==1.0.31                                            # models/swinv2.py subclasses its blocks
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5     # deepspeed's requirements the image lacks
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0   # pydantic's
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$DEST" "${WHEELS[@]}"

# Published as sources only: built here into pure-Python wheels (py3-none-any).
[ -n "$(ls "$DEST"/antlr4_python3_runtime-4.9.3-*.whl 2>/dev/null)" ] ||
  "$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
# DeepSpeed: no ops built ahead (DS_BUILD_OPS=0); ZeRO-3 with torch's AdamW needs none, and any other op JIT-compiles
# on the GPU machine with its nvcc. --no-build-isolation: its setup.py imports torch.
[ -n "$(ls "$DEST"/deepspeed-0.19.8-*.whl 2>/dev/null)" ] ||
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" deepspeed==0.19.8

ls -l "$DEST"
du -sh "$DEST"
echo "travelling in all (source tree that git would send + .whl):"
{ git ls-files -z --cached --others --exclude-standard | du -ch --files0-from=- | tail -1; du -sh "$DEST"; }
