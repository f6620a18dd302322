"""Where a train step's time goes: one profiled step per method, time per kind of XLA op.

    python benchmarks/profile_step.py [--shapes small] [--methods mgr_exact,mgr_fd]
                                      [--batch 64] [--generator stylegan2|random|shipped]
                                      [--top 12] [--keep DIR]

Each method's step is built and compiled as in benchmarks/step_time.py, run once untimed,
then once under `jax.profiler.trace`. The trace's op events are summed by kind: for a
fusion that contains a convolution, its window and dimension labels (a 3x3 forward or
input-gradient convolution, a weight gradient whose window is the activation's size, ...);
for other ops, the name without its number (`transpose_copy_fusion`, `wrapped_scatter`,
...). On a CPU the op times of both cores add up, so the total exceeds the step's wall time.

It answers questions that FLOP counts do not: at 224x224 batch 64 on 2 CPU cores the exact
MPS step has fewer FLOPs than the FD one but ran 5 % longer (median of two rounds). This
breakdown showed where: its 3x3 convolutions of the same shapes took 18 % longer, and its
non-convolution YNNPACK fusions (BatchNorm channel reductions) took 10.9 s against 4.8 s.
At the 16x16 default on the same CPU it found every step's largest item, `conv 01fb_o01i->f01b window={size=2x2 rhs_reversal=1x1}`
(5-7 ms each, a third of base's op time), to be XLA's operand swap of the 3x3 convolutions on
the last stage's 2x2 activations; `resnet.Conv` now computes those as patches @ kernel, and
every step at that shape runs about 1.7x faster.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import step_time  # noqa: E402


def op_events(trace_dir):
    """(name, microseconds) of every complete event in the Perfetto trace under trace_dir."""
    path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
    if not path:
        raise SystemExit(f"no perfetto trace under {trace_dir}: is this jax's profiler?")
    with gzip.open(path[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [(e["name"], e.get("dur", 0)) for e in events if e.get("ph") == "X"]


_CONV = r"convolution\(.*?\), (window=\{[^}]*\}, )?dim_labels=([^,\s]+)"


def _conv_label(window, dim_labels):
    return f"conv {dim_labels} {window.strip(', ')}".strip()


def op_kinds(hlo_text):
    """Instruction name -> a label of the convolutions it is or calls (empty if none)."""
    bodies = {m.group(1): m.group(2) for m in
              re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S)}
    kinds = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ fusion\(.*?calls=%?([\w.\-]+)",
                         hlo_text, re.M):
        convs = re.findall(_CONV, bodies.get(m.group(2), ""))
        kinds[m.group(1)] = " | ".join(sorted({_conv_label(w, d) for w, d in convs}))
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ " + _CONV, hlo_text, re.M):
        kinds[m.group(1)] = _conv_label(m.group(2), m.group(3))
    return kinds


def is_op(name):
    """Op events, not the runtime's own spans (Python frames, thunk executors, thread pools)."""
    return not (name.startswith("$") or "Thunk" in name or "ThreadPool" in name)


def profile(shape, name, generator, args, trace_dir):
    """Per kind of op: (total ms, number of ops) for one step of benchmark method `name`."""
    compiled, (state, batch, rng, frozen), _ = step_time.compile_method(shape, name, generator,
                                                                        args)
    kinds = op_kinds(compiled.as_text())
    state, metrics = compiled(state, batch, rng, frozen)  # untimed: warms up the run
    jax.block_until_ready((state, metrics))
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        jax.block_until_ready(compiled(state, batch, rng, frozen))
    totals, counts = collections.Counter(), collections.Counter()
    for op, us in op_events(trace_dir):
        if is_op(op):
            kind = kinds.get(op) or op.split(".")[0]
            totals[kind] += us / 1e3
            counts[kind] += 1
    return totals, counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="small", help="small or paper (one shape)")
    parser.add_argument("--methods", default="mgr_exact,mgr_fd",
                        help=f"comma list of {sorted(step_time.VARIANTS)}")
    parser.add_argument("--batch", type=int, default=64, help="real, synthetic and D_val batch")
    parser.add_argument("--generator", default="stylegan2",
                        choices=("stylegan2", "random", "shipped"))
    parser.add_argument("--top", type=int, default=12, help="kinds of op listed per method")
    parser.add_argument("--keep", default="", help="keep the traces in this folder")
    args = parser.parse_args(argv)
    if args.shapes not in step_time.SHAPES:
        parser.error(f"--shapes {args.shapes!r}: choose one of {sorted(step_time.SHAPES)}")
    if args.generator == "shipped" and args.shapes != "small":
        parser.error("--generator shipped is the digits generator: --shapes small")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in names:
        if m not in step_time.VARIANTS:
            parser.error(f"unknown method {m!r}; choose from {sorted(step_time.VARIANTS)}")
    # The step_time settings this script does not expose.
    args.syn_batch, args.dtype, args.gen_dtype = 0, "float32", "float32"
    args.paper_gen_res, args.paper_gen_channels = 0, ""
    generator = step_time.make_generator(args.shapes, args)
    root = args.keep or tempfile.mkdtemp(prefix="profile_step_")
    print(f"device: {jax.devices()[0].platform}, shape {args.shapes}, batch {args.batch}")
    for name in names:
        totals, counts = profile(args.shapes, name, generator, args,
                                 os.path.join(root, name))
        print(f"\n{name}: {sum(totals.values()):.0f} ms of ops in one step")
        for kind, ms in totals.most_common(args.top):
            print(f"  {ms:10.1f} ms  {counts[kind]:5d} ops  {kind[:100]}")


if __name__ == "__main__":
    main()
