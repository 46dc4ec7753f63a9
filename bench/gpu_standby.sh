#!/bin/bash
# bench/gpu_standby.sh PROFILES [DURATION_S] [APP]: the synthetic day with a burst of 1.5x its peak over 10% of
# it, served by A+S+T on one GPU (MIG emulated with MPS) twice, one run after the other: without and with the
# standby plan (bench/h200_eval.py --standby). Each run's record packed into $OUT/<mode>.tar.xz; printed: each
# run's violations and slices, and its applies (serving time of each plan change, up and down) from events.jsonl.
set -u
source bench/gpu_setup.sh || exit 1
P=$1; D=${2:-150}; APP=${3:-examples/h200/traffic.yaml}
rm -rf /tmp/ab /tmp/abruns; mkdir -p /tmp/ab
for mode in cold standby; do
  extra=""; [ $mode = standby ] && extra="--standby"
  timeout -s INT ${RUN_TIMEOUT:-285} python3 bench/h200_eval.py --app $APP --systems ast --profiles $P \
    --peak-fraction 0.5 --duration $D --interval 5 --burst 1.5 --out /tmp/ab/$mode --runs /tmp/abruns/$mode $extra \
    > /tmp/ab/$mode.log 2>&1
  echo "== $mode rc $?"; grep -v "load: " /tmp/ab/$mode.log | tail -8
  for ev in /tmp/abruns/$mode/*/events.jsonl; do
    python3 - "$ev" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
plans = [e for e in ev if e["kind"] == "plan" and "apply_s" in e]
for e in plans:
    print(f"  t {e['t']:7.1f}  {e['demand_rps']:7.1f} req/s  serving in {e['apply_s']:5.2f} s  standby {e.get('standby')}  {e['reason'][:70]}")
ups = sorted(e["apply_s"] for e in plans if " up " in e["reason"] or "surge" in e["reason"] or "shedding" in e["reason"])
if ups:
    print(f"  up applies: {len(ups)}, median {ups[len(ups) // 2]:.2f} s, max {ups[-1]:.2f} s")
PY
  done
  d=/tmp/pack/$mode; mkdir -p $d; cp /tmp/ab/$mode.log /tmp/ab/$mode/*/results.json $d/ 2>/dev/null
  for rd in /tmp/abruns/$mode/*/; do
    cp $rd/events.jsonl $rd/run.json $rd/summary.json $rd/host.csv $d/ 2>/dev/null
    [ -f $rd/requests.csv ] && xz -T4 -6 -c $rd/requests.csv > $d/requests.csv.xz
    [ -f $rd/server.log ] && xz -T4 -6 -c $rd/server.log > $d/server.log.xz
  done
  tar cJf $OUT/$mode.tar.xz -C /tmp/pack $mode
done
ls -la $OUT
