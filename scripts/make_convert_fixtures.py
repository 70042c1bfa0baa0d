"""Fixtures for tests/convert.rs: small reference networks (random weights, the reference structures
at small widths) saved the way each project saves its weights, for `genzoo convert` to read without
Python, and each network's forward pass on a fixed input, which the converted model must reproduce.
float32, one thread, seeded.

    .venv/bin/python scripts/make_convert_fixtures.py   # writes tests/fixtures/convert/

Files:
  latest_net_G_A.pth, latest_net_G_B.pth, latest_net_D_A.pth: junyanz CycleGAN as its
    `save_networks` writes them (`torch.save(net.state_dict())`): ngf 2, 2 residual blocks, ndf 2,
    n_layers_D 2, one channel.
  old_net_G.pth: a junyanz generator as PyTorch 0.3-era code saved it: the legacy (pre-1.6)
    format, with InstanceNorm running_mean / running_var / num_batches_tracked in the state dict
    (junyanz's `__patch_instance_norm_state_dict` deletes them on load).
  200000-G.ckpt (legacy format, as yunjey's pretrained weights), 200000-D.ckpt: yunjey StarGAN's
    `torch.save(self.G.state_dict())`: conv_dim 2, c_dim 3, repeat_num 2; D at 16 x 16, conv_dim 4,
    repeat_num 3.
  netG_epoch_24.pth: pytorch/examples DCGAN's generator (nz 8, ngf 4, one channel, 32 x 32) with
    `module.` on every key, as `nn.DataParallel` saves; BatchNorm running statistics from a few
    training-mode passes. netG_missing_key.pth lacks `module.main.4.weight`; netG_wrong_shape.pth
    has a `module.main.4.weight` one entry too long.
  pgan.pth: a pytorch_GAN_zoo checkpoint, `{config, netG, netD, avgG}` (the config an object, as
    the zoo's is): 16 x 16 (depths 8, 8, 8), latent 8, one channel; avgG differs from netG.
  vae.ckpt: a PyTorch Lightning-style wrapped checkpoint: `{epoch, global_step, state_dict,
    optimizer_states, hyper_parameters}` with pytorch/examples' VAE (hidden 4, latent 2) under the
    LightningModule's attribute `model.`.
  netG_epoch_24.protocol4.pth, netG_epoch_24.protocol5.pth, pgan.protocol4.pth,
    old_net_G.protocol4.pth: the files above saved again with `torch.save(...,
    pickle_protocol=4 or 5)` (frames, short strings, MEMOIZE, STACK_GLOBAL; the last in the legacy
    format), which must convert to the same tensors as the protocol-2 files torch.save writes by
    default.
  netG_module.pth, netG_module_legacy.pth, netG_module.protocol4.pth, netG_script.pt: the
    generator of netG_epoch_24.pth saved whole, as older GAN code saves it (`torch.save(netG)`: the
    pickled module, its class named; in the zip and the legacy format, and at pickle protocol 4,
    whose sets are EMPTY_SET / ADDITEMS), with a non-persistent buffer `main.1.scratch` that
    state_dict() leaves out, and as TorchScript (`torch.jit.save(torch.jit.script(netG))`, without
    that buffer), each of which must convert to what the state dict converts to.
  forward.safetensors: per network its fixed input and output:
    cyclegan.x (2, 1, 16, 16) in [-1, 1]; cyclegan.G_A, cyclegan.G_B, cyclegan.old_G: each generator
    on x;
    stargan.x (2, 3, 16, 16), stargan.c (2, 3); stargan.G: G(x, c) in training mode, as yunjey's
    test() runs it (each image's own instance statistics);
    dcgan.z (2, 8); dcgan.G: netG in eval mode (BatchNorm's running statistics);
    pgan.z (4, 8); pgan.netG, pgan.avgG: each at 16 x 16 (level 2, alpha 1), computed in float64;
    vae.z (2, 2); vae.logits: the decoder's logits.
"""
import collections
import copy
import os
import types

import torch
import torch.nn as nn
from safetensors.torch import save_file

from common import VAE
from progan_reference import DNet, GNet
from train_gan_reference import generator as dcgan_generator, weights_init
from translation_reference import Discriminator, Generator, NLayerDiscriminator, ResnetGenerator, init_weights

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "convert")


def save(obj, name, legacy=False):
    torch.save(obj, os.path.join(OUT, name), _use_new_zipfile_serialization=not legacy)


def cyclegan(t):
    """junyanz's save_networks: one state dict per network, `<epoch>_net_<name>.pth`."""
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    t["cyclegan.x"] = x
    for name in ["G_A", "G_B"]:
        net = init_weights(ResnetGenerator(1, 1, ngf=2, n_blocks=2))
        save(net.state_dict(), f"latest_net_{name}.pth")
        t[f"cyclegan.{name}"] = net(x)
    save(init_weights(NLayerDiscriminator(1, ndf=2, n_layers=2)).state_dict(), "latest_net_D_A.pth")
    # PyTorch before 0.4 kept running statistics in InstanceNorm; such checkpoints carry them for
    # every norm, and junyanz's loader deletes them (the forward pass uses each image's statistics).
    net = init_weights(ResnetGenerator(1, 1, ngf=2, n_blocks=2))
    state = collections.OrderedDict(net.state_dict())
    for name, module in net.named_modules():
        if isinstance(module, nn.InstanceNorm2d):
            c = module.num_features
            state[f"{name}.running_mean"] = torch.randn(c) * 0.1
            state[f"{name}.running_var"] = torch.rand(c) + 0.5
            state[f"{name}.num_batches_tracked"] = torch.tensor(100)
    save(state, "old_net_G.pth", legacy=True)
    t["cyclegan.old_G"] = net(x)


def stargan(t):
    """yunjey's save: `torch.save(self.G.state_dict(), '{}-G.ckpt')`, and D's beside it."""
    G = Generator(conv_dim=2, c_dim=3, repeat_num=2)
    D = Discriminator(image_size=16, conv_dim=4, c_dim=3, repeat_num=3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    c = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    G(x, c)  # moves the running statistics off their initial values, as training does
    t.update({"stargan.x": x, "stargan.c": c, "stargan.G": G(x, c)})
    save(G.state_dict(), "200000-G.ckpt", legacy=True)
    save(D.state_dict(), "200000-D.ckpt")


class DcganGenerator(nn.Module):
    """pytorch/examples' Generator: its layers as `self.main`."""

    def __init__(self, nz, ngf, nc):
        super().__init__()
        self.main = dcgan_generator(nz, ngf, nc)

    def forward(self, z):
        return self.main(z)


def dcgan(t):
    """pytorch/examples dcgan/main.py: `torch.save(netG.state_dict(), 'netG_epoch_%d.pth')`, here
    of an `nn.DataParallel`-wrapped netG, whose keys all start with `module.`."""
    net = DcganGenerator(8, 4, 1)
    net.apply(weights_init)
    with torch.no_grad():  # weights 10x the init's, so that the outputs span tanh's range
        for m in net.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.mul_(10)
    for _ in range(3):
        net(torch.randn(8, 8, 1, 1))
    net.eval()
    z = torch.randn(2, 8)
    t.update({"dcgan.z": z, "dcgan.G": net(z.view(2, 8, 1, 1))})
    state = nn.DataParallel(net).state_dict()
    save(state, "netG_epoch_24.pth")
    missing = collections.OrderedDict((k, v) for k, v in state.items() if k != "module.main.4.weight")
    save(missing, "netG_missing_key.pth")
    wrong = collections.OrderedDict(state)
    wrong["module.main.4.weight"] = torch.ones(state["module.main.4.weight"].numel() + 1)
    save(wrong, "netG_wrong_shape.pth")


def pgan(t):
    """pytorch_GAN_zoo's BaseGAN.save: `{'config': ..., 'netG': ..., 'netD': ..., 'avgG': ...}`."""
    # Four maps at 16 x 16 would leave pixels whose maps are all near zero, which the pixel norm
    # scales up with their rounding (torch's float32 then misses float64 by 4e-5): eight.
    G = GNet(8, [8, 8, 8], 1)
    D = DNet([8, 8, 8], 1, group=4)
    avg = copy.deepcopy(G)
    with torch.no_grad():
        for p in avg.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    z = torch.randn(4, 8)
    # In float64, the reference for float32 results (values reach 3, no output activation).
    exact = lambda net: copy.deepcopy(net).double()(z.double(), 2, 1.0)
    t.update({"pgan.z": z, "pgan.netG": exact(G), "pgan.avgG": exact(avg)})
    config = types.SimpleNamespace(depthScale0=8, dimLatentVector=8, dimOutput=1, miniBatchStdDev=True)
    save({"config": config, "netG": G.state_dict(), "netD": D.state_dict(), "avgG": avg.state_dict()}, "pgan.pth")


def vae(t):
    """A Lightning checkpoint of a LightningModule holding the network as `self.model`."""
    net = VAE(hidden=4, latent=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    z = torch.randn(2, 2)
    t.update({"vae.z": z, "vae.logits": net.decode_logits(z)})
    state = collections.OrderedDict((f"model.{k}", v) for k, v in net.state_dict().items())
    save({"epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.1.0", "state_dict": state,
          "optimizer_states": [opt.state_dict()], "hyper_parameters": {"hidden": 4, "latent": 2}}, "vae.ckpt")


def protocols():
    """Some files above again, pickled at higher protocols (written from the files, so this alone can
    be rerun: `python -c 'import make_convert_fixtures as m; m.protocols()'` in scripts/)."""
    for name, protocol, legacy in [("netG_epoch_24", 4, False), ("netG_epoch_24", 5, False), ("pgan", 4, False),
                                   ("old_net_G", 4, True)]:
        obj = torch.load(os.path.join(OUT, f"{name}.pth"), weights_only=False)
        torch.save(obj, os.path.join(OUT, f"{name}.protocol{protocol}.pth"), pickle_protocol=protocol,
                   _use_new_zipfile_serialization=not legacy)


def modules():
    """netG_epoch_24.pth's generator saved whole and as TorchScript (written from that file, so this
    alone can be rerun: `python -c 'import make_convert_fixtures as m; m.modules()'` in scripts/)."""
    state = torch.load(os.path.join(OUT, "netG_epoch_24.pth"))
    net = DcganGenerator(8, 4, 1)
    net.load_state_dict(collections.OrderedDict((k.removeprefix("module."), v) for k, v in state.items()))
    net.eval()
    torch.jit.save(torch.jit.script(net), os.path.join(OUT, "netG_script.pt"))
    # A buffer state_dict() leaves out, which a whole module's pickle still holds.
    net.main[1].register_buffer("scratch", torch.ones(4), persistent=False)
    save(net, "netG_module.pth")
    save(net, "netG_module_legacy.pth", legacy=True)
    torch.save(net, os.path.join(OUT, "netG_module.protocol4.pth"), pickle_protocol=4)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    t = {}
    for make in [cyclegan, stargan, dcgan, pgan, vae]:
        make(t)
    protocols()
    modules()
    t = {k: v.detach().float().contiguous() for k, v in t.items()}
    save_file(t, os.path.join(OUT, "forward.safetensors"), metadata={"torch": torch.__version__})
    sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in sorted(os.listdir(OUT))}
    print(f"wrote {OUT}: {len(sizes)} files, {sum(sizes.values()) / 1024:.0f} KiB (torch {torch.__version__})")
    for f, n in sizes.items():
        print(f"  {f}: {n / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
