#!/bin/sh
# The committed synth report: all five methods on the same documented subset, then analyze.
# Run from the repository root under the heavy-job lock:
#   flock /tmp/longforge-heavy.lock sh benchmarks/synth/make_report.sh
# Quest runs twice: with Gemma-predicted queries (the method; 420 one-segment queries, cached
# and resumable) and with the explicit `document` ablation (keywords from the text itself).
set -e
L=8192
OUT=out/synth-report
python benchmarks/synth/make_subset.py --per-source 60 --seed 0 --out $OUT/corpus.jsonl
for m in standard knn iclm longdoc; do
  longforge -q synth $OUT/corpus.jsonl -o $OUT/$m --method $m -L $L --seed 0
done
for qs in document causal; do
  longforge -q synth $OUT/corpus.jsonl -o $OUT/quest-$qs --method quest -L $L --seed 0 \
    --query-source $qs --max-segments 1 --no-keyword standard
done
longforge -q analyze $OUT/standard $OUT/quest-causal $OUT/quest-document $OUT/knn $OUT/iclm \
  $OUT/longdoc -o reports/synth --contexts 5 --seed 0
for m in standard knn iclm longdoc quest-causal quest-document; do
  cp $OUT/$m/manifest.json reports/synth/manifest-$m.json
done
