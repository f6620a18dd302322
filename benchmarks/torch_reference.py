"""A straightforward PyTorch base / GDA / PCR / MGR train step: a yardstick for step_time.py.

    python benchmarks/torch_reference.py [--shape small|paper] [--batch 64] [--iters 5]
                                         [--methods base,pcr,mgr_exact,mgr_fd]
                                         [--generator stylegan2|random] [--out torch.json]

Independent of mgr_jax (torch is an optional benchmark dependency:
benchmarks/requirements-torch.txt; mgr_jax never imports it). Written the plain way a PyTorch
user would: nn.Module classifier, autograd, torch.optim; the MPS step with torch.func.
  - classifier: ResNet-18 (torchvision layout, written here), width and CIFAR stem as
    step_time.py's shapes; Nesterov SGD, momentum 0.9.
  - synthetic images: a conditional generator with random weights, the same architecture and
    size as step_time.py's (a StyleGAN2-style generator with modulated convolutions, or the tiny
    conv generator), resized bilinearly to the classifier's input, [-1, 1] -> [0, 1] ->
    ImageNet normalisation.
  - T: a differentiable RandAugment-like augmentation, two random ops per sample from
    identity, brightness, contrast, rotate, translate x / y (affine_grid + grid_sample), cutout.
  - base: CE(real). gda: + lambda CE(x_p, y_p). pcr: + lambda PCR(x_p) with both branches
    differentiated. BatchNorm running statistics follow the real batch only.
  - mgr (Algorithm 1): the virtual step theta' = theta - eta grad[CE(real) + lambda PCR] by
    torch.func.grad; the finder's hypergradient either exact (torch.func.grad through the
    virtual step, second order included) or DARTS' finite difference (Eq. 9:
    eps = 0.01 / ||v||, central difference of grad_phi lambda PCR at theta +- eps v), plus
    0.01 * grad KL; finder Adam(1e-4); then the real step with x_p regenerated from the new
    finder. Nothing is shared between the virtual and the real step (the plain way).
Timing: `--warmup` untimed rounds, then the median of `--iters` rounds; each round runs one
step of every method in turn (CUDA synchronised when run on a GPU), so load from other
processes hits all methods alike. Threads: torch.set_num_threads(os.cpu_count()) (`--threads`),
OMP_WAIT_POLICY=PASSIVE unless the environment sets it.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.shapes import SHAPES  # noqa: E402  (torch-free, JAX-free)

# OpenMP threads that spin while waiting lose badly when other processes share the cores
# (measured here: base step 120 ms at 1 thread, 400-1300 ms at 2 spinning threads, 200 ms at
# 2 passive ones); read once when torch loads, so set before the import. Override by env.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, grad  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
LAMBDA = 1.0
LR = 0.05
FINDER_LR = 1e-4
KL_WEIGHT = 0.01
FD_EPS = 0.01


# ----------------------------------------------------------------------------- classifier
class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """forward(x NCHW normalised) -> (logits, pooled features)."""

    def __init__(self, num_classes, width=1.0, cifar_stem=False):
        super().__init__()
        base = max(1, int(round(64 * width)))
        self.cifar_stem = cifar_stem
        self.conv1 = (nn.Conv2d(3, base, 3, 1, 1, bias=False) if cifar_stem
                      else nn.Conv2d(3, base, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(base)
        blocks, cin = [], base
        for i in range(4):
            cout = base * 2 ** i
            for j in range(2):
                blocks.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if not self.cifar_stem:
            x = F.max_pool2d(x, 3, 2, 1)
        feats = self.blocks(x).mean(dim=(2, 3))
        return self.fc(feats), feats


class no_stat_updates:
    """Inside: train-mode BatchNorm uses batch statistics and leaves running ones alone."""

    def __init__(self, model):
        self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def __enter__(self):
        for m in self.bns:
            m.track_running_stats = False

    def __exit__(self, *exc):
        for m in self.bns:
            m.track_running_stats = True


# ----------------------------------------------------------------------------- generators
def _blur_kernel(channels, device):
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device)
    f = torch.outer(f, f)
    f = f / f.sum()
    return f[None, None].repeat(channels, 1, 1, 1)


class ModConv(nn.Module):
    """StyleGAN2 modulated conv (non-fused: scale input, shared conv, demodulate output)."""

    def __init__(self, cin, cout, w_dim, kernel=3, up=False, demodulate=True, act=True,
                 resolution=4):
        super().__init__()
        self.affine = nn.Linear(w_dim, cin)
        nn.init.ones_(self.affine.bias)
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.up, self.demodulate, self.act, self.kernel = up, demodulate, act, kernel
        self.register_buffer("noise", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("blur", _blur_kernel(cout, "cpu"), persistent=False)

    def forward(self, x, w):
        cin = x.shape[1]
        styles = self.affine(w)
        if not self.demodulate:
            styles = styles / math.sqrt(cin)
        weight = self.weight / math.sqrt(cin * self.kernel ** 2)
        x = x * styles[:, :, None, None]
        if self.up:  # transposed conv stride 2, then the 4x4 FIR low-pass (official path).
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.blur * 4, groups=x.shape[1])
        else:
            x = F.conv2d(x, weight, padding=self.kernel // 2)
        if self.demodulate:
            d = torch.rsqrt((styles.square() @ weight.square().sum((2, 3)).t()) + 1e-8)
            x = x * d[:, :, None, None]
        if self.act:
            x = x + self.noise * self.noise_strength
            x = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)
            return x.clamp(-256, 256)
        return (x + self.bias[None, :, None, None]).clamp(-256, 256)


class StyleGAN2Like(nn.Module):
    """Conditional StyleGAN2(-ADA) generator, skip architecture: (z, labels) -> NCHW [-1, 1]."""

    def __init__(self, z_dim, w_dim, num_classes, resolution, mapping_layers, channel_base,
                 channel_max):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Linear(num_classes, w_dim)
        layers, cin = [], z_dim + w_dim
        for _ in range(mapping_layers):
            layers.append(nn.Linear(cin, w_dim))
            cin = w_dim
        self.mapping = nn.ModuleList(layers)
        res_list = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in res_list}
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        self.convs, self.torgbs = nn.ModuleList(), nn.ModuleList()
        for r in res_list:
            if r == 4:
                self.convs.append(nn.ModuleList([ModConv(ch[4], ch[4], w_dim, resolution=4)]))
            else:
                self.convs.append(nn.ModuleList([
                    ModConv(ch[r // 2], ch[r], w_dim, up=True, resolution=r),
                    ModConv(ch[r], ch[r], w_dim, resolution=r)]))
            self.torgbs.append(ModConv(ch[r], 3, w_dim, kernel=1, demodulate=False, act=False))
        self.register_buffer("blur3", _blur_kernel(3, "cpu"), persistent=False)

    def forward(self, z, labels):
        c = F.one_hot(labels, self.num_classes).float()
        norm = lambda t: t * torch.rsqrt(t.square().mean(1, keepdim=True) + 1e-8)  # noqa: E731
        x = torch.cat([norm(z), norm(self.embed(c))], 1)
        for layer in self.mapping:
            x = F.leaky_relu(layer(x), 0.2) * math.sqrt(2)
        w = x
        h = self.const[None].expand(z.shape[0], -1, -1, -1)
        img = None
        for convs, torgb in zip(self.convs, self.torgbs):
            for conv in convs:
                h = conv(h, w)
            y = torgb(h, w)
            if img is not None:  # x2 FIR upsampling of the running image.
                img = F.conv_transpose2d(img, self.blur3 * 4, stride=2, padding=1,
                                         groups=3)
            img = y if img is None else img + y
        return img.clamp(-1, 1)


class TinyGen(nn.Module):
    """The tiny conditional conv generator of generator.kind=random: (z, labels) -> NCHW."""

    def __init__(self, latent_dim, num_classes, resolution, channels=32):
        super().__init__()
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.fc = nn.Linear(2 * latent_dim, 16 * channels)
        self.convs = nn.ModuleList()
        size = 4
        while size < resolution:
            size *= 2
            self.convs.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        self.channels = channels

    def forward(self, z, labels):
        h = self.fc(torch.cat([z, self.embed(labels)], 1)).view(-1, self.channels, 4, 4)
        for conv in self.convs:
            h = F.leaky_relu(conv(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)
        return torch.tanh(self.out(h))


class Finder(nn.Module):
    """F(z) = z + tanh(MLP(z)), three layers, leaky ReLU; starts as the identity."""

    def __init__(self, dim):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        nn.init.zeros_(self.fc3.weight)
        nn.init.zeros_(self.fc3.bias)

    def forward(self, z):
        h = F.leaky_relu(self.fc1(z), 0.2)
        h = F.leaky_relu(self.fc2(h), 0.2)
        return z + torch.tanh(self.fc3(h))


# ----------------------------------------------------------------------------- augmentation
AUG_OPS = ("identity", "brightness", "contrast", "rotate", "translate_x", "translate_y",
           "cutout")


def draw_aug(n, device, gen, num_ops=2):
    """Random op index, magnitude, sign and cutout centre per sample and layer."""
    return [dict(op=torch.randint(len(AUG_OPS), (n,), device=device, generator=gen),
                 mag=torch.rand(n, device=device, generator=gen),
                 sign=torch.where(torch.rand(n, device=device, generator=gen) < 0.5, -1.0, 1.0),
                 centre=torch.rand(2, n, device=device, generator=gen))
            for _ in range(num_ops)]


def augment(images, layers):
    """Differentiable T on NCHW [0, 1] images; ops selected per sample with torch.where."""
    n, _, h, w = images.shape
    for p in layers:
        op, mag, sign = p["op"], p["mag"], p["sign"]
        sel = lambda name: (op == AUG_OPS.index(name))[:, None, None, None]  # noqa: E731
        angle = math.radians(30.0) * mag * sign * (op == AUG_OPS.index("rotate"))
        tx = 0.6 * mag * sign * (op == AUG_OPS.index("translate_x"))  # 30 % of the side
        ty = 0.6 * mag * sign * (op == AUG_OPS.index("translate_y"))
        theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), tx], 1),
                             torch.stack([angle.sin(), angle.cos(), ty], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        factor = (1.0 + 0.9 * mag * sign)[:, None, None, None]
        out = torch.where(sel("brightness"), images * factor, out)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        out = torch.where(sel("contrast"), mean + factor * (images - mean), out)
        side = 0.5 * mag * min(h, w)
        ys = torch.arange(h, device=images.device)[None] + 0.5
        xs = torch.arange(w, device=images.device)[None] + 0.5
        in_y = (ys - p["centre"][0][:, None] * h).abs() < side[:, None] / 2
        in_x = (xs - p["centre"][1][:, None] * w).abs() < side[:, None] / 2
        hole = (in_y[:, :, None] & in_x[:, None, :])[:, None] & sel("cutout")
        out = torch.where(hole, torch.full_like(out, 0.5), out)
        images = out.clamp(0, 1)
    return images


# ----------------------------------------------------------------------------- the steps
class Bench:
    def __init__(self, shape, batch, syn_batch, generator_kind, device, gen_res=0,
                 gen_channels=""):
        spec = dict(SHAPES[shape])
        if shape == "paper" and gen_res:
            spec["gen_resolution"] = gen_res
        if shape == "paper" and gen_channels:
            spec["channel_base"], spec["channel_max"] = (int(v) for v in gen_channels.split(","))
        self.spec, self.device = spec, device
        self.batch, self.syn_batch = batch, syn_batch
        torch.manual_seed(0)
        self.model = ResNet18(spec["num_classes"], spec["width"], spec["cifar_stem"]).to(device)
        self.model.train()
        if generator_kind == "random":
            self.gen = TinyGen(spec["z_dim"], spec["num_classes"], spec["gen_resolution"])
        else:
            self.gen = StyleGAN2Like(spec["z_dim"], spec["w_dim"], spec["num_classes"],
                                     spec["gen_resolution"], spec["mapping_layers"],
                                     spec["channel_base"], spec["channel_max"])
        self.gen = self.gen.to(device).eval().requires_grad_(False)
        self.finder = Finder(spec["z_dim"]).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, nesterov=True)
        self.finder_opt = torch.optim.Adam(self.finder.parameters(), lr=FINDER_LR)
        self.mean = torch.tensor(MEAN, device=device)[None, :, None, None]
        self.std = torch.tensor(STD, device=device)[None, :, None, None]
        self.rng = torch.Generator(device=device).manual_seed(1)
        s, n, c = spec["image_size"], batch, spec["num_classes"]
        self.batch_data = {
            "image": torch.randn(n, 3, s, s, device=device, generator=self.rng),
            "label": torch.randint(c, (n,), device=device, generator=self.rng),
            "val_image": torch.randn(n, 3, s, s, device=device, generator=self.rng),
            "val_label": torch.randint(c, (n,), device=device, generator=self.rng)}

    # x_p = normalise(resize(G(F(z), y)) mapped to [0, 1])
    def synth01(self, w, y):
        img = self.gen(w, y)
        s = self.spec["image_size"]
        if img.shape[-1] != s:
            img = F.interpolate(img, size=(s, s), mode="bilinear", align_corners=False)
        return ((img + 1) / 2).clamp(0, 1)

    def norm(self, x01):
        return (x01 - self.mean) / self.std

    def draw(self):
        z = torch.randn(self.syn_batch, self.spec["z_dim"], device=self.device,
                        generator=self.rng)
        y = torch.randint(self.spec["num_classes"], (self.syn_batch,), device=self.device,
                          generator=self.rng)
        return z, y, draw_aug(self.syn_batch, self.device, self.rng)

    def syn_loss(self, kind, forward, x01, y, aug):
        if kind == "gda":
            return F.cross_entropy(forward(self.norm(x01))[0], y)
        feats = forward(self.norm(x01))[1]
        feats_aug = forward(self.norm(augment(x01, aug)))[1]
        return (feats_aug - feats).square().sum(1).mean()

    def real_step(self, kind, x01, y, aug):
        """The classifier's optimiser step on CE(real) [+ lambda L_syn(x01)]."""
        b = self.batch_data
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(b["image"])[0], b["label"])
        if kind != "base":
            with no_stat_updates(self.model):
                loss = loss + LAMBDA * self.syn_loss(kind, self.model, x01, y, aug)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def step(self, method):
        if method == "base":
            return self.real_step("base", None, None, None)
        z, y, aug = self.draw()
        if method in ("gda", "pcr"):
            with torch.no_grad():
                x01 = self.synth01(z, y)
            return self.real_step(method, x01, y, aug)
        self.mps_update(z, y, aug, exact=(method == "mgr_exact"))
        with torch.no_grad():
            x01 = self.synth01(self.finder(z), y)
        return self.real_step("pcr", x01, y, aug)

    def mps_update(self, z, y, aug, exact):
        """Finder step of Algorithm 1 (virtual SGD step, hypergradient on D_val, Adam)."""
        b, model, eta = self.batch_data, self.model, self.opt.param_groups[0]["lr"]
        theta = {k: v.detach() for k, v in model.named_parameters()}
        phi = {k: v.detach() for k, v in self.finder.named_parameters()}

        def fmodel(params, x):
            return functional_call(model, params, (x,))

        def l_syn(params, p):
            w = functional_call(self.finder, p, (z,))
            return LAMBDA * self.syn_loss("pcr", lambda x: fmodel(params, x),
                                          self.synth01(w, y), y, aug)

        def inner(params, p):
            return F.cross_entropy(fmodel(params, b["image"])[0], b["label"]) + l_syn(params, p)

        def virtual(p):
            g = grad(inner)(theta, p)
            return {k: theta[k] - eta * g[k] for k in theta}

        def outer(params):
            return F.cross_entropy(fmodel(params, b["val_image"])[0], b["val_label"])

        with no_stat_updates(model):
            if exact:
                hyper = grad(lambda p: outer(virtual(p)))(phi)
            else:
                theta_v = virtual(phi)
                v = grad(outer)(theta_v)
                eps = FD_EPS / (torch.sqrt(sum(t.square().sum() for t in v.values())) + 1e-12)
                plus = {k: theta[k] + eps * v[k] for k in theta}
                minus = {k: theta[k] - eps * v[k] for k in theta}
                g_plus = grad(l_syn, argnums=1)(plus, phi)
                g_minus = grad(l_syn, argnums=1)(minus, phi)
                hyper = {k: -eta * (g_plus[k] - g_minus[k]) / (2 * eps) for k in phi}

        def kl(p):
            w = functional_call(self.finder, p, (z,))
            mu, var = w.mean(0), w.var(0, unbiased=False)
            return (-0.5 * (1 + torch.log(var + 1e-12) - mu.square() - var)).mean()

        g_kl = grad(kl)(phi)
        for name, param in self.finder.named_parameters():
            param.grad = hyper[name] + KL_WEIGHT * g_kl[name]
        self.finder_opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_methods(bench, names, warmup, iters):
    """Interleaved rounds (one step of each method per round); median seconds per method."""
    times = {name: [] for name in names}
    for r in range(warmup + iters):
        for name in names:
            sync(bench.device)
            start = time.perf_counter()
            loss = bench.step(name)
            float(loss)  # waits on any device
            sync(bench.device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
        if r >= warmup:
            print(f"  torch round {r - warmup + 1}/{iters}: " + ", ".join(
                f"{n} {1e3 * times[n][-1]:.0f} ms" for n in names), flush=True)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--syn-batch", type=int, default=0, help="0 = --batch")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default="base,pcr,mgr_exact,mgr_fd")
    parser.add_argument("--generator", default="stylegan2", choices=("stylegan2", "random"))
    parser.add_argument("--paper-gen-res", type=int, default=0)
    parser.add_argument("--paper-gen-channels", default="")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bench = Bench(args.shape, args.batch, args.syn_batch or args.batch, args.generator, device,
                  args.paper_gen_res, args.paper_gen_channels)
    result = {"torch": torch.__version__, "device": str(device), "threads": args.threads,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "shape": args.shape, "batch": args.batch, "syn_batch": bench.syn_batch,
              "generator": args.generator, "methods": {}}
    print(f"torch {torch.__version__} on {device}, {args.threads} threads; shape {args.shape}, "
          f"batch {args.batch} + {bench.syn_batch}, generator {args.generator}", flush=True)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method, (median, times) in time_methods(bench, names, args.warmup, args.iters).items():
        result["methods"][method] = {"step_s": median, "step_times_s": times}
        print(f"  torch {method:<10} {1e3 * median:9.1f} ms/step", flush=True)
    ms = {k: v["step_s"] for k, v in result["methods"].items()}
    for a, b in (("mgr_exact", "mgr_fd"), ("mgr_exact", "base"), ("mgr_fd", "base"),
                 ("pcr", "base")):
        if a in ms and b in ms:
            print(f"  torch {a} / {b}: {ms[a] / ms[b]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
