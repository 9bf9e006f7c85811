#!/bin/sh
# The committed synth reports: all methods on the same documented subset, then analyze.
# Run from the repository root, alone on the machine:
#   sh benchmarks/synth/make_report.sh
# makes reports/synth (420 documents, 60 per domain). Quest runs with Gemma-predicted queries
# (`causal`: few-shot), Qwen instruct queries (`instruct`: zero-shot, $K queries per segment) and
# the explicit `document` ablation (keywords from the text itself), each twice: with the default
# `--group-boundary mix` (out/.../quest-<source>) and with `--group-boundary pad`
# (quest-<source>-pad: one keyword per sequence, at the cost of padding; the second run reuses
# the cached queries); DRAWS="any shared" adds, for each, a run with `--keyword-draw shared`
# (quest-<source>-shared[-pad]: the representative keyword drawn among those another document
# also holds), and "join" one with `--keyword-draw join` (quest-<source>-join[-pad]: then a
# document alone on its keyword joins one another document drew). Queries are predicted for
# the first SEGMENTS segments of 256 tokens of each document (default 1), cached per segment
# and resumable;
# ENGINE (hf | llamacpp; CAUSAL_ENGINE / INSTRUCT_ENGINE for one source) generates them,
# THREADS sets the engine's CPU threads (1 on cores other jobs share), DTYPE (CAUSAL_DTYPE /
# INSTRUCT_DTYPE) the predictor's precision with ENGINE=hf (auto | fp32 | bf16), SHARDS and
# WORKERS the shards and local worker processes of the Quest runs (their outputs are the same
# for any count).
# The whole sample corpus (reports/synth-full; hours of CPU with ENGINE=hf):
#   PER_SOURCE=100000 OUT=out/synth-full REPORT=reports/synth-full ENGINE=llamacpp \
#     sh benchmarks/synth/make_report.sh
# and with the instruct predictor in bf16 (reports/synth-full-instruct):
#   PER_SOURCE=100000 OUT=out/synth-full-instruct REPORT=reports/synth-full-instruct \
#     QUERY_SOURCES="instruct document" DRAWS="any shared join" INSTRUCT_DTYPE=bf16 \
#     THREADS=1 SHARDS=8 WORKERS=2 sh benchmarks/synth/make_report.sh
# One `longforge analyze` report compares them all: keyword coverage (documents with a keyword,
# documents in keywords of >= 2), purity, intra-context cosine with intervals, domain spread and
# the most frequent keywords (candidates for the stop list).
# An output folder made with other settings (or by an older longforge) is refused: delete $OUT.
set -e
[ -x .venv/bin/longforge ] && PATH="$PWD/.venv/bin:$PATH"
L=${L:-8192}
PER_SOURCE=${PER_SOURCE:-60}
QUERY_SOURCES=${QUERY_SOURCES:-"causal instruct document"}
GROUP_BOUNDARIES=${GROUP_BOUNDARIES:-"mix pad"}
DRAWS=${DRAWS:-any}
ENGINE=${ENGINE:-hf}
CAUSAL_ENGINE=${CAUSAL_ENGINE:-$ENGINE}
INSTRUCT_ENGINE=${INSTRUCT_ENGINE:-$ENGINE}
THREADS=${THREADS:-0}
DTYPE=${DTYPE:-auto}
CAUSAL_DTYPE=${CAUSAL_DTYPE:-$DTYPE}
INSTRUCT_DTYPE=${INSTRUCT_DTYPE:-$DTYPE}
SHARDS=${SHARDS:-1}
WORKERS=${WORKERS:-1}
K=${K:-0}            # queries per segment of the instruct source (0: its default, 3)
SEGMENTS=${SEGMENTS:-1}  # segments per document whose queries are predicted (first ones)
CAUSAL_PREDICTOR=${CAUSAL_PREDICTOR:-gemma-3-270m}
INSTRUCT_PREDICTOR=${INSTRUCT_PREDICTOR:-qwen2.5-coder-0.5b-instruct}
OUT=${OUT:-out/synth-report}
REPORT=${REPORT:-reports/synth}
QUIET=${QUIET--q}    # QUIET= (empty) shows progress bars
python benchmarks/synth/make_subset.py --per-source $PER_SOURCE --seed 0 --out $OUT/corpus.jsonl
outputs=""
for m in standard knn iclm longdoc; do
  echo "== $m"
  longforge $QUIET synth $OUT/corpus.jsonl -o $OUT/$m --method $m -L $L --seed 0
done
for qs in $QUERY_SOURCES; do
  predict=""
  case $qs in
    causal) predict="--predictor $CAUSAL_PREDICTOR --engine $CAUSAL_ENGINE --engine-threads $THREADS --dtype $CAUSAL_DTYPE" ;;
    instruct) predict="--predictor $INSTRUCT_PREDICTOR --engine $INSTRUCT_ENGINE --engine-threads $THREADS --dtype $INSTRUCT_DTYPE --queries-per-segment $K" ;;
  esac
  for draw in $DRAWS; do
    for gb in $GROUP_BOUNDARIES; do
      name=quest-$qs; [ $draw = any ] || name=$name-$draw; [ $gb = pad ] && name=$name-pad
      echo "== $name"
      longforge $QUIET synth $OUT/corpus.jsonl -o $OUT/$name --method quest -L $L --seed 0 \
        --query-source $qs --max-segments $SEGMENTS --no-keyword standard --group-boundary $gb $predict \
        --keyword-draw $draw --num-shards $SHARDS --workers $WORKERS
      outputs="$outputs $OUT/$name"
    done
  done
done
echo "== analyze"
longforge $QUIET analyze $OUT/standard $outputs $OUT/knn $OUT/iclm $OUT/longdoc \
  -o $REPORT --contexts 5 --seed 0
for m in standard knn iclm longdoc; do cp $OUT/$m/manifest.json $REPORT/manifest-$m.json; done
for o in $outputs; do cp $o/manifest.json $REPORT/manifest-$(basename $o).json; done
