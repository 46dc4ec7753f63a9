#!/bin/bash
# bench/gpu_demo.sh [DURATION_S]: `jigsaw demo` on the GPU of a host without a package index (the device
# machine), its outputs in $OUT: the demo's log and summary, and the profile it measured where the repository
# has none for this GPU (examples/h200/profiles.<gpu type>.csv is where such a profile is kept).
set -u
source bench/gpu_setup.sh || exit 1
python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__)"
rm -rf /tmp/demo; mkdir -p /tmp/demo
timeout -s INT ${DEMO_TIMEOUT:-540} python3 -m jigsawserve.orchestrator.cli demo --device gpu --out /tmp/demo --duration ${1:-90} --json \
  > /tmp/demo/demo.log 2>&1
echo "demo rc $?"
grep -v "load: \|^{" /tmp/demo/demo.log | tail -45
cp /tmp/demo/profiles* /tmp/demo/summary.json /tmp/demo/events.jsonl $OUT/ 2>/dev/null
xz -c /tmp/demo/demo.log > $OUT/demo.log.xz; [ -f /tmp/demo/server.log ] && xz -c /tmp/demo/server.log > $OUT/server.log.xz
ls -la $OUT
