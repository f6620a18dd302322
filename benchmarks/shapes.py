"""The benchmark shapes that step_time.py (JAX) and torch_reference.py (PyTorch) share.

small: the default config (16x16, ResNet-18 width 0.25, CIFAR stem, 10 classes) with a
StyleGAN2 of 16x16; paper: ResNet-18 at 224x224 for Cars (196 classes) with a 64x64
StyleGAN2 resized to 224. No imports: the PyTorch reference loads it without JAX.
"""

SHAPES = {
    "small": dict(image_size=16, width=0.25, cifar_stem=True, num_classes=10,
                  gen_resolution=16, z_dim=64, w_dim=64, mapping_layers=2,
                  channel_base=2048, channel_max=64),
    "paper": dict(image_size=224, width=1.0, cifar_stem=False, num_classes=196,
                  gen_resolution=64, z_dim=512, w_dim=512, mapping_layers=8,
                  channel_base=8192, channel_max=256),
}
