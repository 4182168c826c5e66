"""Issue 26: the three recorders (swap, kernel_value_channel, kernel_lse) at 7B layer dims, batch 4, 32 new
tokens, 10 s clip, 3 interleaved repeats each against plain SDPA generate; writes the JSON named by the second argument.
Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kernel_recorders.py swap,kernel_value_channel,kernel_lse"""
import json
import sys

from auralens.bench import bench_yield_scale, build_7b_layers

lm = build_7b_layers()
out = {}
for rec in sys.argv[1].split(","):
    out[rec] = bench_yield_scale(lm, batches=(4,), new_tokens=(32,), repeats=3, clip_seconds=10.0, recorder=rec)
    sys.stdout.write(json.dumps({rec: {k: v for k, v in out[rec]["runs"][0].items() if not k.endswith("_all")}}) + "\n")
    sys.stdout.flush()
with open(sys.argv[2] if len(sys.argv) > 2 else "bench_yield_kernel_recorders.json", "w") as f:
    json.dump(out, f, indent=1)
