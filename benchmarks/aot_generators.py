"""Every generator kind's MGR steps compiled for TPU and GPU targets, at its fixture's shapes.

    python benchmarks/aot_generators.py [--fixtures ../shared/fixtures] [--targets v5e,h100]
        [--steps mgr_exact,mgr_fd] [--out docs/results/aot/generators.json]

For each official checkpoint in the shared fixtures (StyleGAN2-ADA, BigGAN, FastGAN, EDM,
StyleGAN-XL; `.xz` files decompressed to a temporary folder) the default config's classifier
(16x16, ResNet-18 width 1/4) is trained with that generator, whose output is resized to 16x16:
`mgr_jax.aot` compiles the steps for each target and prints its rows. Needs libtpu and the CUDA
plugin (mgr_jax/aot.py).
"""
import argparse
import dataclasses
import json
import lzma
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import default  # noqa: E402
from mgr_jax.run import aot  # noqa: E402

# kind -> (fixture file, class count); sgxl's fixture is conditional on 4 classes, FastGAN's
# is unconditional
KINDS = {"stylegan2_ada": ("sg2ada_cond10_res32.pkl", 10),
         "biggan": ("biggan_cond10_res32.G_ema.pth", 10),
         "fastgan": ("fastgan_res256_ngf8.pth.xz", 10),
         "edm": ("edm_songunet_cond10_res16.pkl", 10),
         "stylegan_xl": ("sgxl_cond4_res16.pkl.xz", 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                           "shared", "fixtures"))
    parser.add_argument("--targets", default="v5e,h100")
    parser.add_argument("--steps", default="mgr_exact,mgr_fd")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    jax.config.update("jax_platforms", "cpu")
    rows = []
    tmp = tempfile.mkdtemp(prefix="aot_generators_")
    try:
        for kind in args.kinds.split(","):
            name, num_classes = KINDS[kind]
            path = os.path.join(args.fixtures, name)
            if name.endswith(".xz"):
                plain = os.path.join(tmp, name[:-3])
                with lzma.open(path) as f, open(plain, "wb") as g:
                    shutil.copyfileobj(f, g)
                path = plain
            config = default.get_config()
            config.generator.kind = kind
            config.generator.checkpoint = path
            if kind == "edm":
                config.generator.kwargs = {"num_steps": 2}  # the fixture's test setting
            print(f"# {kind}: {name}", flush=True)
            for report in aot.run(config, args.targets.split(","), args.steps.split(","),
                                  ["float32"], "config", num_classes,
                                  out=lambda line: print(line, flush=True)):
                rows.append(dict(dataclasses.asdict(report), kind=kind,
                                 peak_bytes=report.peak_bytes, fits=report.fits))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        with open(args.out, "x") as f:
            json.dump(rows, f, indent=1)
    failed = [r for r in rows if r["error"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
