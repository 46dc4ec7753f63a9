#!/bin/bash
# bench/gpu_multi.sh: one app served across all GPUs of one host (the paper's testbed shape: 4 GPUs), one
# tritonserver whose runners the planner places on every GPU, MIG emulated with MPS SM caps and memory limits.
# Split so that each call of the device tool (600 s) fits:
#
#   bash bench/gpu_multi.sh APP [SYSTEMS] [DURATION_S]   APP: traffic | social | ar; SYSTEMS default ast,st (one
#       after the other in this call, on all the GPUs, the same trace); the synthetic day scaled to
#       PEAK_FRACTION (0.5) of A+S+T's capacity on the host's GPUs (bench/h200_eval.py --gpus N), replayed in
#       DURATION_S (150). Record packed into $OUT/<app>-<systems>.tar.xz; printed: the results table and, per
#       run, the GPUs each plan used.
#   bash bench/gpu_multi.sh floor [APPS]                 the least mean slices any controller could use on that
#       day at the host's GPU count (bench/slice_floor.py's oracle, peak as above, or the runs' own peak_rps
#       from their results.json as PEAKS="traffic:P social:P ar:P"; CPU only, the apps in parallel) into
#       $OUT/slice-floor-<N>gpus.json
#   bash bench/gpu_multi.sh profile APP                  APP's variants profiled on GPU 0 into
#       $OUT/profiles.<gpu type>.<app>.csv, for a GPU type whose profile in examples/h200/ lacks them (H100:
#       traffic only); pass it as PROFILES=... to the runs
#   DRY_RUN=1 GPUS=4 bash bench/gpu_multi.sh APP         on a machine without GPUs: the plan at the day's peak
#       x (1 + headroom) for each system, rendered for examples/inventory/h100x4-nomig.json, printed per GPU
#
# Environment: PROFILES (default by GPU name: H200 examples/h200/profiles.refined2.csv, H100
# examples/h200/profiles.h100-80gb.csv), PEAK_FRACTION, INTERVAL (10), HEADROOM (per app, as the one-GPU
# records: social 0.4, traffic and ar 0.5), EXTRA (more bench/h200_eval.py options), CALL_LIMIT (570: seconds
# this call may take; the eval stops, cleanly, in time to pack what it has).
set -u
t0=$(date +%s)
MODE=${1:-}
LIMIT=${CALL_LIMIT:-570}
PEAK_FRACTION=${PEAK_FRACTION:-0.5}
case $MODE in
  floor|profile|traffic|social|ar) ;;
  *) echo "usage: bash bench/gpu_multi.sh traffic|social|ar [SYSTEMS] [DURATION_S] | floor [APPS] | profile APP"; exit 2;;
esac

if [ -n "${DRY_RUN:-}" ] || { [ $MODE = floor ] && ! command -v nvidia-smi >/dev/null; }; then
  N=${GPUS:-4}; GPU_NAME=${GPU_NAME:-NVIDIA H100 80GB HBM3}   # no GPU here: the host it is prepared for
  echo "no GPU used: planning for $N x $GPU_NAME"
else
  source bench/gpu_setup.sh || exit 1
  N=$(nvidia-smi --query-gpu=count --format=csv,noheader | head -1)
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  if [ "$(nvidia-smi --query-gpu=name --format=csv,noheader | sort -u | wc -l)" != 1 ]; then
    echo "GPUs of different models: one GPU type per plan"; exit 2
  fi
  if nvidia-smi --query-gpu=mig.mode.current --format=csv,noheader | grep -q Enabled; then
    echo "MIG is enabled on a GPU: this script emulates MIG with MPS on GPUs without it"; exit 2
  fi
  echo "$N x $GPU_NAME, MIG disabled on all: MIG emulated with MPS SM caps and memory limits"
fi
case $GPU_NAME in
  *H200*) P=${PROFILES:-examples/h200/profiles.refined2.csv}; GPU_TYPE=h200-141gb;;
  *H100*) P=${PROFILES:-examples/h200/profiles.h100-80gb.csv}; GPU_TYPE=h100-80gb;;
  *) echo "no profile for $GPU_NAME (H100 and H200 have theirs in examples/h200/)"; exit 2;;
esac
headroom() { case $1 in social) echo ${HEADROOM:-0.4};; *) echo ${HEADROOM:-0.5};; esac; }
export PYTHONUNBUFFERED=1

if [ $MODE = profile ]; then
  APP=${2:?profile which app}
  CUDA_VISIBLE_DEVICES=0 timeout -s INT $(( LIMIT - $(date +%s) + t0 - 20 )) python3 -m jigsawserve.orchestrator.cli profile \
    examples/h200/$APP.yaml --device gpu --gpu-type $GPU_TYPE --out $OUT/profiles.$GPU_TYPE.$APP.csv
  echo "profile rc $?"; ls -la $OUT; exit 0
fi

if [ $MODE = floor ]; then
  APPS=${2:-traffic social ar}
  for APP in $APPS; do
    python3 - "$APP" "$P" "$N" "$PEAK_FRACTION" "$(headroom $APP)" "${PEAKS:-}" > /tmp/floor-$APP.log 2>&1 <<'PY' &
import importlib.util, json, sys, time
app_name, profiles_path, gpus, fraction, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
spec = importlib.util.spec_from_file_location("slice_floor", "bench/slice_floor.py")
floor = importlib.util.module_from_spec(spec); spec.loader.exec_module(floor)
from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.planning.capacity import max_demand
from jigsawserve.orchestrator.planning.features import Features
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles
app, profiles = load_app(f"examples/h200/{app_name}.yaml"), load_profiles(profiles_path)
# the day bench/h200_eval.py replays: its peak is the fraction of A+S+T's capacity on the GPUs
given = dict(p.split(":") for p in sys.argv[6].split())  # PEAKS: the runs' peak_rps (results.json), where known
# else the capacity search of bench/h200_eval.py, whose 2-s solves find less on a busy machine: give PEAKS
cap = None if app_name in given else max_demand(app, profiles, gpu_type(default_gpu(profiles)),
                                                PlanOptions(features=Features.parse("ast"), gpus=gpus)).max_demand_rps
peak = float(given[app_name]) if cap is None else fraction * cap
floor.RUNS[app.name] = (peak / gpus, headroom)  # oracle_slices scales the per-GPU peak by the GPUs
rows = []
for h in (0.0, headroom):
    t = time.time()
    r = floor.oracle_slices(app, profiles, gpus, h, 2.0 * gpus)
    r.update(seconds=round(time.time() - t, 1), capacity_ast_rps=cap, profiles=profiles_path,
             peak_given=app_name in given)
    rows.append(r)
    print(f"{app.name} x{gpus} GPUs, peak {peak:.1f} req/s ("
          + ("given" if cap is None else f"{fraction:g} x the A+S+T capacity {cap:.1f}") + f"), headroom {h:g}: "
          f"{100 * r['share']:.1f}% of the slices (least {100 * r['least_share']:.1f}%), "
          f"{r['bins_unplannable']} bins unplannable, {r['plans_solved']} plans in {r['seconds']} s", flush=True)
print(json.dumps(rows))
PY
  done
  wait
  OUTDIR=${OUT:-/tmp}
  for APP in $APPS; do grep -v '^\[' /tmp/floor-$APP.log; done
  python3 -c "
import json, sys
rows = [r for a in sys.argv[1:] for line in open(f'/tmp/floor-{a}.log') if line.startswith('[') for r in json.loads(line)]
json.dump({'gpus': $N, 'gpu': '$GPU_NAME', 'rows': rows}, open('$OUTDIR/slice-floor-${N}gpus.json', 'w'), indent=1)
" $APPS
  echo "wrote $OUTDIR/slice-floor-${N}gpus.json in $(( $(date +%s) - t0 )) s"; exit 0
fi

APP=$MODE; SYSTEMS=${2:-ast,st}; D=${3:-150}; H=$(headroom $APP)
python3 -c "
import sys; from jigsawserve.orchestrator.spec.appspec import load_app; from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import gpu_type; from jigsawserve.orchestrator.spec.profiles import check_coverage, default_gpu, load_profiles
p = load_profiles('$P')
try: check_coverage(load_app('examples/h200/$APP.yaml'), p, gpu_type(default_gpu(p)))
except InputError as exc: sys.exit(str(exc))
" || { echo "$P does not cover $APP: run 'bash bench/gpu_multi.sh profile $APP' first, then PROFILES=..."; exit 3; }

if [ -n "${DRY_RUN:-}" ]; then
  INV=${DRY_INVENTORY:-examples/inventory/h100x4-nomig.json}
  if [ -z "${DRY_INVENTORY:-}" ] && [ $GPU_TYPE = h200-141gb ]; then   # N of the one-H200 file's GPU, UUIDs apart
    INV=/tmp/h200x$N-nomig.json
    python3 -c "
import json; g = json.load(open('examples/inventory/h200-nomig.json'))['gpus'][0]
json.dump({'gpus': [dict(g, index=i, uuid=g['uuid'][:-12] + f'{i:012d}') for i in range($N)]}, open('$INV', 'w'))"
  fi
  python3 - "$APP" "$P" "$N" "$PEAK_FRACTION" "$H" "$SYSTEMS" "$INV" <<'PY'
import sys
from collections import Counter
from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.planning.capacity import max_demand
from jigsawserve.orchestrator.loop.controller import Policy
from jigsawserve.orchestrator.errors import InfeasibleError
from jigsawserve.orchestrator.planning.features import Features
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import from_file
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles
from jigsawserve.orchestrator.serving.render import build_configs
app_name, profiles_path, gpus, fraction, headroom, systems, inv_path = sys.argv[1:]
gpus, fraction, headroom = int(gpus), float(fraction), float(headroom)
app, profiles = load_app(f"examples/h200/{app_name}.yaml"), load_profiles(profiles_path)
gpu, inventory = gpu_type(default_gpu(profiles)), from_file(inv_path)
cap = max_demand(app, profiles, gpu, PlanOptions(features=Features.parse("ast"), gpus=gpus)).max_demand_rps
peak = fraction * cap
print(f"{app.name}: A+S+T capacity on {gpus} GPUs {cap:.1f} req/s; trace peak {peak:.1f}; the controller plans for "
      f"x {1 + headroom:g} = {peak * (1 + headroom):.1f} req/s at the peak")
for key in systems.split(","):
    opts = PlanOptions(features=Features.parse(key), gpus=gpus, latency_reserve=Policy().admission_reserve)
    try:
        plan = make_plan(app, profiles, gpu, peak * (1 + headroom), opts)
    except InfeasibleError as exc:
        print(f"  {key}: no plan at the peak: {exc}")
        continue
    rendered = build_configs(plan, inventory)
    print(f"  {key}: {plan.slices} slices on {len(plan.placement['gpus'])} of {gpus} GPUs, {len(rendered.configs)} "
          f"models rendered for {inventory.source}")
    for g, segs in enumerate(plan.placement["gpus"]):
        caps = Counter(f"{s['size']}g x {len(rendered.manifest['bindings'][s['label']])} processes at "
                       + rendered.manifest["bindings"][s["label"]][0].split(", ", 1)[-1] for s in segs)
        print(f"    GPU {g} ({inventory.gpus[g].uuid}): {sum(s['size'] for s in segs)} slices: "
              + "; ".join(f"{n} x {c}" for c, n in caps.items()))
PY
  exit $?
fi

rm -rf /tmp/multi /tmp/multiruns /tmp/pack; mkdir -p /tmp/multi/$APP /tmp/multiruns /tmp/pack
T=$(( LIMIT - ($(date +%s) - t0) - ${PACK_S:-45} ))
echo "$APP: systems $SYSTEMS one after the other on all $N GPUs; day of $D s; $T s left for them"
timeout -s INT $T python3 bench/h200_eval.py --app examples/h200/$APP.yaml --profiles $P --gpus $N \
  --systems $SYSTEMS --peak-fraction $PEAK_FRACTION --headroom $H --duration $D --interval ${INTERVAL:-10} \
  --out /tmp/multi/$APP --runs /tmp/multiruns/$APP ${EXTRA:-} > /tmp/multi/$APP/eval.log 2>&1 \
  || echo "h200_eval rc $? after $(( $(date +%s) - t0 )) s"
tag=$APP-${SYSTEMS//,/-}; d=/tmp/pack/$tag; mkdir -p $d
cp /tmp/multi/$APP/* $d/ 2>/dev/null
for rd in /tmp/multiruns/$APP/*/; do
  [ -d "$rd" ] || continue
  n=$(basename $rd); mkdir -p $d/$n
  for f in events.jsonl host.csv run.json summary.json jigsaw.json; do [ -f $rd/$f ] && cp $rd/$f $d/$n/; done
  cp $rd/*.png $d/$n/ 2>/dev/null
  [ -f $rd/requests.csv ] && xz -T4 -6 -c $rd/requests.csv > $d/$n/requests.csv.xz
  [ -f $rd/server.log ] && xz -T4 -6 -c $rd/server.log > $d/$n/server.log.xz
  echo "== $n: the slices each plan took per GPU (the segments themselves: placement.png)"
  python3 - $rd/events.jsonl <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("kind") == "plan" and isinstance(e.get("plan"), dict):
        gpus = e["plan"].get("placement", {}).get("gpus", [])
        print(f"  t {e.get('t', 0):7.1f}  {e.get('demand_rps', 0):7.1f} req/s  slices per GPU "
              f"{[sum(s['size'] for s in g) for g in gpus]}")
PY
done
tar cJf $OUT/$tag.tar.xz -C /tmp/pack $tag
grep -v "^\[.*load: " /tmp/multi/$APP/eval.log | tail -30
ls -la $OUT; echo "total $(( $(date +%s) - t0 )) s"
