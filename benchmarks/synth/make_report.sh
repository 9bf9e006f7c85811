#!/bin/sh
# The committed synth reports: all methods on the same documented subset, then analyze.
# Run from the repository root under the heavy-job lock:
#   flock /tmp/longforge-heavy.lock sh benchmarks/synth/make_report.sh
# makes reports/synth (420 documents, 60 per domain). Quest runs with Gemma-predicted queries
# (the method; one-segment queries, cached and resumable) and with the explicit `document`
# ablation (keywords from the text itself). The whole sample corpus, ablation only:
#   PER_SOURCE=100000 QUERY_SOURCES=document OUT=out/synth-full REPORT=reports/synth-full \
#     flock /tmp/longforge-heavy.lock sh benchmarks/synth/make_report.sh
set -e
L=${L:-8192}
PER_SOURCE=${PER_SOURCE:-60}
QUERY_SOURCES=${QUERY_SOURCES:-"causal document"}
OUT=${OUT:-out/synth-report}
REPORT=${REPORT:-reports/synth}
python benchmarks/synth/make_subset.py --per-source $PER_SOURCE --seed 0 --out $OUT/corpus.jsonl
outputs=""
for m in standard knn iclm longdoc; do
  longforge -q synth $OUT/corpus.jsonl -o $OUT/$m --method $m -L $L --seed 0
done
for qs in $QUERY_SOURCES; do
  longforge -q synth $OUT/corpus.jsonl -o $OUT/quest-$qs --method quest -L $L --seed 0 \
    --query-source $qs --max-segments 1 --no-keyword standard
  outputs="$outputs $OUT/quest-$qs"
done
longforge -q analyze $OUT/standard $outputs $OUT/knn $OUT/iclm $OUT/longdoc \
  -o $REPORT --contexts 5 --seed 0
for m in standard knn iclm longdoc; do cp $OUT/$m/manifest.json $REPORT/manifest-$m.json; done
for qs in $QUERY_SOURCES; do cp $OUT/quest-$qs/manifest.json $REPORT/manifest-quest-$qs.json; done
