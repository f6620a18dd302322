"""The README's accelerator table from `python -m mgr_jax.aot --out=...` JSON files.

    python benchmarks/aot_table.py docs/results/aot/paper_float32.json docs/results/aot/paper_bfloat16.json

One row per (target, dtype, step): peak memory per device against the device's, TFLOP, the
TPU cost model's time, and each step's time relative to base on the same target and dtype.
"""
import json
import math
import sys


def main(paths):
    rows = [r for path in paths for r in json.load(open(path))]
    base = {(r["target"], r["dtype"]): r for r in rows if r["step"] == "base"}
    print("| target | dtype | step | peak / device GiB | fits | TFLOP | TPU cost model ms | / base |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["error"]:
            print(f"| {r['target']} | {r['dtype']} | {r['step']} | compile failed: "
                  f"{r['error'][:80]} | | | | |")
            continue
        ms = r["optimal_seconds"] * 1e3 if r["optimal_seconds"] == r["optimal_seconds"] else None
        b = base.get((r["target"], r["dtype"]))
        ratio = (f"{r['optimal_seconds'] / b['optimal_seconds']:.1f}"
                 if ms is not None and b and b["optimal_seconds"] == b["optimal_seconds"] else "")
        flops = "" if r["flops"] is None or math.isnan(r["flops"]) else f"{r['flops'] / 1e12:.2f}"
        print(f"| {r['target']} | {r['dtype']} | {r['step']} | "
              f"{r['peak_bytes'] / 2**30:.2f} / {r['device_bytes'] / 2**30:.1f} | "
              f"{'yes' if r['fits'] else 'no'} | {flops} | "
              f"{'' if ms is None else f'{ms:.1f}'} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1:])
