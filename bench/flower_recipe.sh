#!/usr/bin/env bash
# The shipped sepsis recipe on Flower and in process, same data and seed; compare the packages.
#
# Usage: bench/flower_recipe.sh WORK_DIR [ROUNDS] [TREES]
#   (defaults: the shipped recipe's 10 rounds and 100 trees; DATA overrides the data file;
#   LOCAL=0 runs the Flower side only)
#
# On loopback: a test PKI, a SuperLink (TLS, node authentication) and one SuperNode per site
# of the `hospital-unit` partition of the full PhysioNet 2019 file, each started with the
# `vigil federation` commands of docs/flower.md; then `vigil federation run` with FedProx
# (mu 0.01), seed 0 and the trees (depth 6), and `vigil federate` with the same arguments in
# process. Prints whether the two model.onnx are byte-identical and both packages' test-split
# numbers (`vigil evaluate --split test`). Every process it starts is stopped on exit.
set -euo pipefail

WORK=$(realpath -m "${1:?usage: bench/flower_recipe.sh WORK_DIR [ROUNDS] [TREES]}")
ROUNDS=${2:-10}
TREES=${3:-100}
DATA=$(realpath "${DATA:-../shared/data/physionet2019/sepsis_hourly.parquet}")
VIGIL=$(realpath .venv/bin/vigil)
SITES=(A-MICU A-SICU B-MICU B-SICU)
PORT=${PORT:-19092}
export OMP_NUM_THREADS=1
mkdir -p "$WORK"
cd "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT

stamp() { date -u +%H:%M:%S; }
echo "$(stamp) recipe: $ROUNDS rounds FedProx mu 0.01, $TREES trees depth 6, seed 0, $DATA"

"$VIGIL" federation certs --out pki --host 127.0.0.1 --host localhost >/dev/null
REGISTER=()
for s in "${SITES[@]}"; do
    "$VIGIL" federation site-key "$s" --out "keys/$s" >/dev/null
    REGISTER+=(--register "keys/$s/$s.pub")
done

# in process, started first (it shares the machine with the Flower run); LOCAL=0 skips it
LOCAL_RUN=${LOCAL:-1}
[ "$LOCAL_RUN" = 0 ] || ( /usr/bin/time -v "$VIGIL" federate --data "$DATA" --sites hospital-unit --strategy fedprox \
    --mu 0.01 --rounds "$ROUNDS" --seed 0 --boost-trees "$TREES" --out pkg-in-process \
    --json > in-process.json 2> in-process.log; echo "$(stamp) in-process done" ) &
LOCAL=$!

setsid "$VIGIL" federation coordinator --work coord --certs pki --port "$PORT" \
    "${REGISTER[@]}" > coordinator.log 2>&1 &
PIDS+=($!)
# the sites dial only once the coordinator has registered every key (else Flower refuses them)
until [ "$(grep -c 'registered as node' coordinator.log)" -ge ${#SITES[@]} ]; do sleep 1; done
i=0
for s in "${SITES[@]}"; do
    setsid "$VIGIL" federation site --data "$DATA" --partition hospital-unit --name "$s" \
        --work "sites/$s" --superlink "127.0.0.1:$PORT" --ca pki/ca.crt --key "keys/$s/$s.key" \
        --port $((PORT + 2 + i)) > "site-$s.log" 2>&1 &
    PIDS+=($!)
    i=$((i + 1))
done
echo "$(stamp) SuperLink and ${#SITES[@]} SuperNodes started"

T0=$(date +%s)
"$VIGIL" federation run --work coord --certs pki --port "$PORT" --sites ${#SITES[@]} \
    --out pkg-flower --strategy fedprox --mu 0.01 --rounds "$ROUNDS" --seed 0 \
    --boost-trees "$TREES" --boost-depth 6 --timeout 3600 --wait 1800 --json \
    > flower.json 2> flower.log
echo "$(stamp) flower done in $(( $(date +%s) - T0 )) s (sites prepared meanwhile)"
wait "$LOCAL"
[ -f pkg-in-process/model.onnx ] || { echo "no in-process package here (LOCAL=0?)"; exit 0; }

if cmp -s pkg-in-process/model.onnx pkg-flower/model.onnx; then
    echo "model.onnx: byte-identical"
else
    echo "model.onnx: DIFFERENT"
fi
for p in pkg-in-process pkg-flower; do
    "$VIGIL" evaluate --model "$p" --data "$DATA" --split test --json > "test-$p.json"
done
echo "$(stamp) test-split numbers in test-pkg-in-process.json and test-pkg-flower.json"
