# bench/gpu_setup.sh: sourced at the start of a command on a GPU host without a package index (the device
# machine): installs the dependencies from $BUNDLE, a `jigsaw bundle` tarball (README.md, "Air-gapped
# hosts"), into /tmp/site unless it already holds them, and puts this checkout first on the path (the
# bundle's own wheel of the project may be older than the tree). Prints the GPU and the code's commit.
BUNDLE=${BUNDLE:-.whl/jigsaw-cp312.tar.xz}
export PYTHONUNBUFFERED=1
_t0=$(date +%s)
if [ ! -x /tmp/site/bin/jigsaw ]; then
  rm -rf /tmp/jb /tmp/site; mkdir -p /tmp/jb && tar xf "$BUNDLE" -C /tmp/jb \
    && /tmp/jb/install.sh --target /tmp/site > /tmp/jb-install.log 2>&1 || { tail -40 /tmp/jb-install.log; return 1; }
fi
ls .whl/*.whl >/dev/null 2>&1 && [ ! -f /tmp/site/.extra ] && python3 -m pip install -q --no-index --no-deps --no-compile \
  --target /tmp/site .whl/*.whl && touch /tmp/site/.extra  # wheels the bundle left out that the host lacks
# the checkout's jigsawserve/ links its folders as the installed namespace; where a copy lost the links, make them
_ns=$PWD
if [ ! -d jigsawserve/orchestrator ]; then
  _ns=/tmp/jigsaw-ns; mkdir -p $_ns/jigsawserve
  for f in orchestrator triton_backend tools model_repository_templates; do ln -sfn "$PWD/$f" $_ns/jigsawserve/$f; done
fi
export PYTHONPATH=$_ns:/tmp/site JIGSAW_TRITON_HOME=/tmp/site/jigsaw-triton JIGSAW_STUB_PYTHONPATH=/tmp/site/jigsaw-stub
jigsaw() { python3 -m jigsawserve.orchestrator.cli "$@"; }
echo "setup $(( $(date +%s) - _t0 )) s; code $(cat .whl/COMMIT 2>/dev/null)"
nvidia-smi --query-gpu=index,name,memory.used,utilization.gpu,mig.mode.current --format=csv,noheader
