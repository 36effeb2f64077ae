#!/usr/bin/env bash
# Run the paper's test pipeline on the bundled tiny example:
#
#   1. caffe-compat test       (scripts/test_res.sh: the TEST net writes <id>_blob_0.mat logits)
#   2. caffe-compat gen-preds  (scripts/gen_preds.sh: .mat -> VOC palette PNG predictions)
#   3. caffe-compat eval       (scripts/eval.sh: confusion matrix, per-class IoU, mIoU)
#
# Usage: bash examples/run_demo.sh [OUT_DIR]      (OUT_DIR defaults to ./demo_out)
#
# Needs the `caffe-compat` command on PATH (pip install -e . in the repository); set
# CAFFE_COMPAT to use another command, e.g. CAFFE_COMPAT="python -m caffe_compat".
# Everything else is found relative to this script, so it runs from any folder.  A second run
# reuses the .mat and PNG files already in OUT_DIR (delete OUT_DIR to start over).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
CONFIG="$REPO/configs/tiny_segaware_test.prototxt"
WEIGHTS="$HERE/tiny_segaware.caffemodel"
DATA="$HERE/tiny_voc"
CROP_SIZE=65

read -r -a CC <<< "${CAFFE_COMPAT:-caffe-compat}"
if ! command -v "${CC[0]}" >/dev/null 2>&1; then
    echo "run_demo.sh: '${CC[0]}' not found; install the package first:" >&2
    echo "  python3 -m venv .venv && .venv/bin/pip install -e . && PATH=.venv/bin:\$PATH bash examples/run_demo.sh" >&2
    exit 1
fi

OUT="${1:-./demo_out}"
mkdir -p "$OUT/features"
OUT="$(cd "$OUT" && pwd)"
FEATURES="$OUT/features"
PREDS="$OUT/results/VOC2012/Segmentation/comp6_val_cls"

echo "== 1/3 test: $(basename "$CONFIG") on $(wc -l < "$DATA/list.txt" | tr -d ' ') images -> $FEATURES"
"${CC[@]}" test "$CONFIG" "$WEIGHTS" \
    --define "DATA_ROOT=$DATA" \
    --define "LIST=$DATA/list.txt" \
    --define "IDS=$DATA/ids.txt" \
    --define "FEATURE_DIR=$FEATURES" \
    --define "CROP_SIZE=$CROP_SIZE" \
    --define "HALF_SIZE=$(( (CROP_SIZE + 1) / 2 ))" \
    --no-progress

echo "== 2/3 gen-preds: .mat logits -> palette PNGs"
"${CC[@]}" gen-preds "$FEATURES" --images "$DATA/JPEGImages" --out "$OUT" --testset val --no-progress

echo "== 3/3 eval: predictions vs $DATA/SegmentationClass"
"${CC[@]}" eval "$PREDS" "$DATA/SegmentationClass" --list "$DATA/ids.txt" --no-progress

echo "predictions: $PREDS"
