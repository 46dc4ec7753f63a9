#!/bin/bash
# bench/h200_pair.sh TAG0 "ARGS0" TAG1 "ARGS1": two bench/h200_eval.py runs side by side (GPU 0 and GPU 1) on an
# nvidia-h200-x2 machine (the device tool), each with its own MPS daemon, inventory and load generator;
# each run's record packed into $OUT/<TAG>.tar.xz. Dependencies installed offline by bench/gpu_setup.sh
# (from $BUNDLE, a `jigsaw bundle` tarball), the code run from this checkout.
set -u
T=${EVAL_TIMEOUT:-540}  # each run's limit (s)
t0=$(date +%s)
source bench/gpu_setup.sh || exit 1
rm -rf /tmp/eval /tmp/runs /tmp/pack; mkdir -p /tmp/eval /tmp/runs /tmp/pack
one() {
  local gpu=$1 tag=$2; shift 2
  mkdir -p /tmp/eval/$tag
  CUDA_VISIBLE_DEVICES=$gpu timeout -s TERM $T python3 bench/h200_eval.py \
    --profiles examples/h200/profiles.refined2.csv --peak-fraction 0 --duration 450 --interval 10 \
    --out /tmp/eval/$tag --runs /tmp/runs/$tag "$@" > /tmp/eval/$tag/eval.log 2>&1
  echo "$tag: rc $? after $(( $(date +%s) - t0 )) s"
}
one 0 "$1" $2 &
one 1 "$3" $4 &
wait
for tag in "$1" "$3"; do
  d=/tmp/pack/$tag; mkdir -p $d
  cp /tmp/eval/$tag/* $d/ 2>/dev/null
  for rd in /tmp/runs/$tag/*/; do
    [ -d "$rd" ] || continue
    n=$(basename $rd); mkdir -p $d/$n
    for f in events.jsonl host.csv run.json summary.json; do [ -f $rd/$f ] && cp $rd/$f $d/$n/; done
    [ -f $rd/requests.csv ] && xz -T4 -6 -c $rd/requests.csv > $d/$n/requests.csv.xz
    [ -f $rd/server.log ] && xz -T4 -6 -c $rd/server.log > $d/$n/server.log.xz
    jigsaw report $rd --bins 2 > $d/$n/outcomes-2s.txt 2>&1
  done
  tar cJf $OUT/$tag.tar.xz -C /tmp/pack $tag
  echo "== $tag"; grep -v "^\[.*load: " /tmp/eval/$tag/eval.log | tail -25
done
ls -la $OUT; echo "total $(( $(date +%s) - t0 )) s"
