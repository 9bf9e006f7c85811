#!/bin/sh
# The committed synth report: all five methods on the same documented subset, then analyze.
# Run from the repository root under the heavy-job lock:
#   flock /tmp/longforge-heavy.lock sh benchmarks/synth/make_report.sh
# QUERY_SOURCE=causal uses the bundled Gemma for quest queries (about 420 segments: ~20-60 min
# on 2 busy cores, cached and resumable); the default "document" is the explicit ablation mode.
set -e
QS=${QUERY_SOURCE:-document}
L=8192
OUT=out/synth-report
python benchmarks/synth/make_subset.py --per-source 60 --seed 0 --out $OUT/corpus.jsonl
for m in standard knn iclm longdoc; do
  longforge -q synth $OUT/corpus.jsonl -o $OUT/$m --method $m -L $L --seed 0
done
longforge -q synth $OUT/corpus.jsonl -o $OUT/quest-$QS --method quest -L $L --seed 0 \
  --query-source $QS --max-segments 1 --no-keyword standard
longforge -q analyze $OUT/standard $OUT/quest-$QS $OUT/knn $OUT/iclm $OUT/longdoc \
  -o reports/synth --contexts 5 --seed 0
for m in standard knn iclm longdoc quest-$QS; do cp $OUT/$m/manifest.json reports/synth/manifest-$m.json; done
