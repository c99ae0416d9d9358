# shellcheck shell=bash
# tests/cluster/run --measure: the per-iteration sum across the hosts' TCP link, beside what
# scripts/bench-scaling's model predicts for that link. Sourced by run once the hosts are up.
#
# On P hosts with one rank each (P = 2, 3), bench_allreduce (tests/bench/allreduce_bench.c) times
# a ping-pong between the first and last host, 8 bytes and 4 MiB: the latency L is the small
# message's one-way time, the bandwidth BW = 4 MiB over the large one's one-way time less L. Then
# it times the sum of one iteration of three models as metatrain runs it (mt_dist_node_sum: one
# MPI_Allreduce of int64 among the nodes' first ranks): n_meta + 1 fixed-point values, one
# signature per tensor and one for the meta-loss, and 36 counts (src/dist/allreduce.c; counted by
# scripts/bench-scaling's reduction_values). The model is bench-scaling's allreduce_model:
# 2 ceil(log2 P) L + 2 (P - 1)/P bytes / BW.

bench=${BENCH_ALLREDUCE:-$root/build/tests/bench_allreduce}
if [ ! -x "$bench" ]; then
    cmake --build "$root/build" --target bench_allreduce >/dev/null || { echo "cluster: cannot build $bench" >&2; exit 1; }
fi
# name:n_meta:tensors of three models; bench-scaling's reduction_values gives one iteration's sum.
models="sinusoid-mlp:1761:6 omniglot-4conv-5way:113221:18 embed-262144x32-mlp:8391045:5"
sizes=$(/usr/bin/python3 - "$root/scripts/bench-scaling" $models <<'EOF'
import runpy, sys
values = runpy.run_path(sys.argv[1])["reduction_values"]
print(" ".join(f"{name}:{values(int(n), int(t))}" for name, n, t in (m.split(":") for m in sys.argv[2:])))
EOF
) || { echo "cluster: cannot read scripts/bench-scaling's model" >&2; exit 1; }

echo "| hosts | link: latency, bandwidth | model | values | bytes | measured (median) | predicted | measured / predicted |"
echo "|---:|---|---|---:|---:|---:|---:|---:|"
for P in 2 3; do
    hosts=$(for i in $(seq "$P"); do printf '%s:1,' "$(host_addr "node$i")"; done)
    args=""
    for s in $sizes; do args="$args ${s#*:}:0"; done
    # More hosts than cores: a rank that spins while it waits would hold a core its partner needs.
    yield=0
    [ "$P" -gt "$(nproc)" ] && yield=1
    # shellcheck disable=SC2086
    out=$(across "${hosts%,}" --mca mpi_yield_when_idle $yield "$bench" --reps 30 --pingpong 8 --pingpong 4194304 $args 2>&1) ||
        { echo "cluster: bench_allreduce on $P hosts failed: $out" >&2; exit 1; }
    echo "$out" | /usr/bin/python3 -c '
import json, runpy, sys
allreduce_model = runpy.run_path(sys.argv[3])["allreduce_model"]
P, sizes = int(sys.argv[1]), [s.split(":") for s in sys.argv[2].split()]
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
ping = {r["pingpong_bytes"]: r["one_way_median_s"] for r in rows if "pingpong_bytes" in r}
L = ping[8]
BW = 4194304 / (ping[4194304] - L)
sums = [r for r in rows if "int64" in r]
for (name, n), r in zip(sizes, sums):
    assert r["int64"] == int(n) and r["nodes"] == P, (r, n, P)
    n64, nbytes, t = r["int64"], r["bytes"], r["sum_median_s"]
    predicted = allreduce_model(P, nbytes, L, BW)
    print(f"| {P} | {L * 1e6:.1f} us, {BW / 1e9:.2f} GB/s | {name} | {n64:,} | {nbytes:,} | "
          f"{t * 1e3:.3f} ms | {predicted * 1e3:.3f} ms | {t / predicted:.2f} |")
' "$P" "$sizes" "$root/scripts/bench-scaling" || exit 1
done
