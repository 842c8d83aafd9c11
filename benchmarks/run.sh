#!/usr/bin/env bash
# Reproduce the committed results on this machine (or file a new machine's): parity, latency and pipeline
# figures for the demo bundle and the Inception-ResNet-V2 bundle. Results land in
# benchmarks/results/<machine-id>/<bundle>/ (JSON with the machine fingerprint, Markdown, PNG).
#
#   benchmarks/run.sh                 # everything (about 15 min on an idle 2-core x86 box)
#   benchmarks/run.sh demo            # only the demo bundle
#   IRV2=path/to/bundle IRV2_KERAS=path/to/model.keras benchmarks/run.sh irv2
#   benchmarks/run.sh resenet         # the trained RESENet (train/README.md; exported here when missing)
#
# On a shared machine, WAIT_QUIET=600 makes each command wait up to 10 min for CPU pressure < 10 %.
set -euo pipefail
cd "$(dirname "$0")/.."

ENDOEDGE=${ENDOEDGE:-.venv/bin/endoedge}
OUT=${OUT:-benchmarks/results}
DATA=${DATA:-}
DEMO=${DEMO:-export/bundles/gastrovision3-efficientnet-lite0}
# The previous default, measured beside the current one in the same latency run.
OLD_DEMO=${OLD_DEMO:-export/bundles/gastrovision3-mobilenetv3}
DEMO_CLIP=${DEMO_CLIP:-$(ls edge/demo/*.mp4 edge/demo/*.avi 2>/dev/null | head -n 1 || true)}
IRV2=${IRV2:-runs/bench-irv2-bundle}
IRV2_KERAS=${IRV2_KERAS:-runs/bench-irv2-untrained/model.keras}
WAIT=(--wait-quiet "${WAIT_QUIET:-0}")
WHAT=${1:-all}

if [[ -z "$DATA" ]]; then
  # The default model's own dataset manifest: its test split is what it never trained on.
  DATA=train/data/gastrovision3-full.csv
fi

parity() {
  # Exit 1 means an artifact missed its parity gate: the results are filed, so report it and go on to
  # the other benchmarks. Any other failure (bad data, unusable reference) filed nothing: stop, so
  # stale results are never left looking current.
  local rc=0
  "$ENDOEDGE" bench parity "$@" || rc=$?
  if [[ $rc -eq 1 ]]; then
    echo "parity: an artifact missed its gate (results filed, see above)"
  elif [[ $rc -ne 0 ]]; then
    echo "parity: failed with exit $rc; stopping" >&2
    exit "$rc"
  fi
}

run_demo() {
  local clip_args=()
  [[ -n "$DEMO_CLIP" ]] && clip_args=(--clip "$DEMO_CLIP")
  parity "$DEMO" --data "$DATA" "${clip_args[@]}" --out "$OUT" "${WAIT[@]}"
  "$ENDOEDGE" bench latency "$DEMO" --data "$DATA" --threads 1,2 --batches 1,2,4,8,16 \
    --variant tflite:xnnpack=false --variant onnxruntime:optimization=basic --compare "$OLD_DEMO" \
    --out "$OUT" "${WAIT[@]}"
  "$ENDOEDGE" bench pipeline "$DEMO" --fps 30,60 --seconds 20 --slow-ms 50 --fresh --out "$OUT" "${WAIT[@]}"
}

make_irv2() {
  # An untrained Inception-ResNet-V2 (seed 0) exported by endoedge export: latency only, when no trained
  # RESENet/IRv2 run is given through IRV2/IRV2_KERAS.
  local run=runs/bench-irv2-untrained
  if [[ ! -f "$run/model.keras" ]]; then
    mkdir -p "$run"
    .venv/bin/python - "$run" <<'PY'
import sys
from pathlib import Path

import keras

from endoedge.core.fileio import sha256_file
from endoedge.core.labels import GASTROVISION3
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import PreprocessSpec

run = Path(sys.argv[1])
keras.utils.set_random_seed(0)
model = keras.applications.InceptionResNetV2(weights=None, classes=3, input_shape=(299, 299, 3))
model.save(run / "model.keras")
manifest = ModelManifest(
    name="irv2-untrained-gastrovision3",
    task="sites",
    labelset=GASTROVISION3,
    preprocess=PreprocessSpec.for_family("inception", 299),
    source={"model_sha256": sha256_file(run / "model.keras"), "recipe": "InceptionResNetV2(weights=None), seed 0"},
)
(run / "manifest.json").write_text(manifest.to_json())
PY
  fi
  if [[ ! -d "$IRV2" ]]; then
    "$ENDOEDGE" export "$run" -o "$IRV2" --dataset "$DATA" \
      --formats savedmodel,tflite-fp32,tflite-fp16,tflite-int8,onnx,onnx-int8
  fi
}

run_irv2() {
  [[ "$IRV2" == runs/bench-irv2-bundle ]] && make_irv2
  local clip=runs/bench-clip-test.mp4
  [[ -f "$clip" ]] || "$ENDOEDGE" datasets make-clip "$DATA" -o "$clip" --split test --per-class 3 --fps 10 --dwell 1.5
  parity "$IRV2" --data "$DATA" --clip "$clip" --out "$OUT" "${WAIT[@]}"
  "$ENDOEDGE" bench latency "$IRV2" --data "$DATA" --threads 2 --batches 1,4 --runs 20 --seconds 3 \
    --keras "$IRV2_KERAS" --variant tflite:xnnpack=false --variant tflite:threads=1 --variant onnxruntime:threads=1 \
    --out "$OUT" "${WAIT[@]}"
  "$ENDOEDGE" bench pipeline "$IRV2" --fps 30,60 --seconds 30 --backend tflite --out "$OUT" "${WAIT[@]}"
  .venv/bin/python benchmarks/irv2_cpu_study.py "$IRV2" "$IRV2_KERAS" \
    --out "$OUT/$(.venv/bin/python -c 'from endoedge.bench.fingerprint import machine_fingerprint as f; print(f()["machine_id"])')/irv2-cpu-study.json"
}

run_resenet() {
  # The trained RESENet: parity on the test split (never trained on) and a clip of it, latency with the
  # Keras peers, and the pipeline with all cores and with one inference thread (a 2-core CPU).
  local run=${RESENET_RUN:-runs/resenet-gastrovision3} bundle=${RESENET:-runs/resenet-bundle}
  local data=train/data/gastrovision3.csv clip=runs/resenet-clip-test.mp4
  if [[ ! -f "$bundle/manifest.json" ]]; then
    "$ENDOEDGE" export "$run" -o "$bundle" --dataset "$data" --formats all-cpu --allow-parity-loss --calibration-size 128
  fi
  [[ -f "$clip" ]] || "$ENDOEDGE" datasets make-clip "$data" -o "$clip" --split test --per-class 3 --fps 10 --dwell 1.5
  parity "$bundle" --data "$data" --split test --clip "$clip" --out "$OUT" "${WAIT[@]}"
  "$ENDOEDGE" bench latency "$bundle" --data "$data" --threads 2 --batches 1,4 --runs 20 --seconds 3 \
    --keras "$run/model.keras" --variant tflite:xnnpack=false --variant tflite:threads=1 \
    --variant onnxruntime:threads=1 --out "$OUT" "${WAIT[@]}"
  "$ENDOEDGE" bench pipeline "$bundle" --fps 30,60 --seconds 30 --backend tflite --out "$OUT" "${WAIT[@]}"
  local one_thread
  one_thread=$(mktemp -d)
  "$ENDOEDGE" bench pipeline "$bundle" --fps 30,60 --seconds 30 --backend tflite --threads 1 --out "$one_thread" "${WAIT[@]}"
  for result in "$one_thread"/*/*/pipeline.json; do
    local folder="$OUT/$(basename "$(dirname "$(dirname "$result")")")/$(basename "$(dirname "$result")")"
    cp "$result" "$folder/pipeline-threads1.json"
    cp "${result%.json}.md" "$folder/pipeline-threads1.md"
  done
  rm -rf "$one_thread"
}

case "$WHAT" in
  demo) run_demo ;;
  irv2) run_irv2 ;;
  resenet) run_resenet ;;
  all) run_demo; run_irv2 ;;
  *) echo "usage: $0 [all|demo|irv2|resenet]" >&2; exit 2 ;;
esac
