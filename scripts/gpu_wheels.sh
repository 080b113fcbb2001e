#!/usr/bin/env bash
# Rebuild .whl/ (ignored by git) from scratch with the Python packages scripts/gpu_check.sh needs on
# the lent GPU machine that its image lacks or holds at another release: CPython 3.12, manylinux
# x86-64, no network there. They travel with the call (`carry: [".whl"]`; 64 MiB per call together
# with the source tree) and gpu_check.sh installs them into /tmp/site there (`pip install
# --no-index --no-deps --target`).
#
#   PY=/work/main/.venv/bin/python bash scripts/gpu_wheels.sh   # a python with pip and torch
#
# .whl/ is emptied first: two versions of one package make that single `pip install` fail. The
# versions are the ones this project is developed and tested with. timm and lightning are on the
# image too, at releases of its own: ours travel because models/swinv2.py extends timm's SwinV2
# blocks through their internals, and the config schema is built from lightning's `Trainer`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=.whl
rm -rf "$DEST"
mkdir -p "$DEST"

# Binary and pure-Python wheels published on PyPI, for CPython 3.12 on manylinux x86-64 (the device
# README's recipe); --no-deps: each requirement the image lacks is named here.
WHEELS=(
  lightning==2.6.6                                        # the schema reads its Trainer
  hydra-core==1.3.8 omegaconf==2.3.1                      # configuration (antlr4 below)
  webdataset==1.0.2 braceexpand==0.1.7                    # data/shards.py
  simplejpeg==1.9.0                                       # data/decode.py
  timm==1.0.31                                            # models/swinv2.py subclasses its blocks
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5     # deepspeed's requirements the image lacks
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0   # pydantic's
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19       # benchmark_e2e.py's transformers example
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"

# Published as sources only: built here into pure-Python wheels (py3-none-any).
"$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
# DeepSpeed: no ops built ahead (DS_BUILD_OPS=0); ZeRO-3 with torch's AdamW needs none, and any
# other op JIT-compiles on the GPU machine with its nvcc. --no-build-isolation: its setup.py
# imports torch.
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" deepspeed==0.19.8

# One version of each package (a wheel's name up to its first '-' is the normalised package name).
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z' 'a-z' | sort | uniq -d)
[ -z "$dupes" ] || { echo "gpu_wheels: more than one version of: $dupes" >&2; exit 1; }
ls -l "$DEST"
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1)"
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 |
  cut -f1)
total=$((tree + $(du -sb "$DEST" | cut -f1)))
echo "gpu_wheels: travelling in all (what git would send + .whl): $((total / 1048576)) MiB of 64"
((total < 64 * 1048576)) || { echo "gpu_wheels: over the device tool's 64 MiB" >&2; exit 1; }
