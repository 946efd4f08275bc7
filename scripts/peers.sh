#!/usr/bin/env bash
# Install each DCN peer whose install is too slow for CI into a fresh virtual environment and
# run refdcn's ecosystem tests and conformance-matrix rows against it.
#
#   scripts/peers.sh [paddle|mindspore|tvm|openvino ...]     (default: all four)
#
# Environments go to ${PEERS_DIR:-/tmp/refdcn-peers}/<peer>; refdcn is used from this checkout
# (PYTHONPATH), never installed into them.  Measured install times on a 2-core machine
# (2026-11-30): openvino 48 s (also in the `test` extra, so CI runs it), paddlepaddle 142 s,
# apache-tvm + scipy 176 s, mindspore 254 s.  mmcv needs a source build of its DCN ops
# (about 20 minutes here; see peers.md) and is not scripted.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${PEERS_DIR:-/tmp/refdcn-peers}"
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(openvino paddle mindspore tvm)
declare -A packages=([openvino]="openvino" [paddle]="paddlepaddle" [mindspore]="mindspore"
                     [tvm]="apache-tvm scipy")
declare -A adapters=([openvino]="openvino openvino-opset8-nopad openvino-opset1"
                     [paddle]="paddle" [mindspore]="mindspore" [tvm]="tvm tvm-compiled")
status=0
for peer in "${peers[@]}"; do
    if [ -z "${packages[$peer]:-}" ]; then
        echo "unknown peer $peer (known: ${!packages[*]})" >&2; exit 2
    fi
    venv="$dir/$peer"
    start=$(date +%s)
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q numpy numba hypothesis pytest ${packages[$peer]}
    echo "== $peer: installed in $(( $(date +%s) - start )) s"
    export PYTHONPATH="$root:$root/tests"
    (cd "$root" && "$venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" \
        tests/test_ecosystem.py) || status=1
    (cd "$root" && "$venv/bin/python" scripts/conformance_matrix.py ${adapters[$peer]}) \
        || status=1
done
exit $status
