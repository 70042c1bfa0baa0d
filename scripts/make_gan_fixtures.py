"""Fixtures for tests/gan_parity.rs: the GAN and the conditional GAN of PyTorch-GAN
(implementations/gan/gan.py, implementations/cgan/cgan.py) and InfoGAN with the paper's
networks (scripts/train_infogan_reference.py), at the widths genzoo trains (models/gan.toml,
models/cgan.toml; InfoGAN at the paper's width, which models/infogan.toml narrows), with each run file's [gan] loss as genzoo defines it
(layers::gan; where PyTorch-GAN's scripts scale a loss otherwise, `d_loss_of` and `g_loss_of`
say so): the first step's passes at the initial weights, then steps of genzoo's GAN step
(layers::gan::AdversarialTraining: a discriminator step on real digits and detached G(z), then a
generator step on fresh G(z)) with fixed inputs; every tensor the test compares. float32 (and
float64, to measure how far float32 can be trusted), one thread, seeded.

    .venv/bin/python scripts/make_gan_fixtures.py
    # writes tests/fixtures/gan.safetensors, cgan.safetensors, infogan.safetensors

At these widths the weights (13 M for InfoGAN) and their gradients would take tens of MB, so:
- the weights are not stored: both sides compute them from the parameter's name
  (`formula_weights`: a splitmix64 stream seeded by the name's FNV-1a hash, uniform with the
  mean and standard deviation of the reference's own initialisation), exactly in float32;
- a linear layer's weight gradient (and a convolution's that acts as one: a 1x1 input to a
  transposed convolution, a kernel covering its whole input) is the product of the layer's
  inputs and the gradients at its outputs over the batch, `left^T right`; where those two are
  smaller than the gradient they are stored instead, checked here to reproduce torch's `.grad`.

Names (float32; losses and means have shape [1]), with genzoo's parameter names:
  init.<name> [shift, scale] and shape.<name> of every parameter and buffer;
  step<k>.images (B, 1, 28, 28) in [0, 1], step<k>.labels (cgan), step<k>.{d,g}_input.noise,
    .classes (cgan), .codes (infogan: one-hot categories, then the continuous codes), for each
    training step k (3 of the gan and cgan, 1 of infogan, and 3 for infogan's float64 run); the
    terms genzoo's step records,
    step<k>.d_loss, g_loss, d_real, d_fake (mean logits of the discriminator step), info_loss;
  first.<output> at the initial weights on step 1's inputs: the discriminator step's fake_d
    (G(z)), d_real_logits, d_fake_logits, q_real and q_fake (infogan), d_loss; the generator
    step's (D not yet stepped) fake_g, g_logits, g_q, g_adversarial and info_loss (infogan),
    g_loss; first_error.<output>, torch's float32 value's largest distance from its float64 one;
  grad.<optimizer>.<name>, or grad.<optimizer>.<name>.left and .right, the gradient of every
    parameter of optimizer `discriminator` (from d_loss) and `generator` (from g_loss) in those
    passes; grad_exact.<optimizer>.<name>, [the float64 gradient's largest entry, the float32
    one's largest distance from it] (an entry of 0 up to rounding is a bias that BatchNorm
    cancels);
  step1.grad.generator.<name> (gan, cgan): the generator step's gradients in training, after
    D's first step;
  after.fake (G on step 1's generator input), after.d_real_logits, after.q_real (on step 1's
    images) in training mode after the last step, and after.fake_eval in inference mode (gan,
    cgan);
  f64.step<k>.{d_loss,g_loss,d_real,d_fake,info_loss} and f64.after.{fake,d_real_logits,q_real}
    (infogan, float64): three steps and the outputs after them, from the same weights in float64.
"""
import argparse
import copy
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import train_infogan_reference as infogan_ref
from common import load_mnist

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
B, SIZE, PIXELS = 4, 28, 28 * 28


# PyTorch-GAN's networks (gan.py, cgan.py), with LeakyReLU out of place (the same values; an
# in-place one would rewrite the outputs whose gradients the factors record).
def block(i, o, normalize=True):
    layers = [nn.Linear(i, o)]
    if normalize:
        layers.append(nn.BatchNorm1d(o, 0.8))
    layers.append(nn.LeakyReLU(0.2))
    return layers


class MlpGenerator(nn.Module):
    """gan.py's Generator, and cgan.py's with `classes` (the label embedding before the noise)."""

    def __init__(self, latent_dim, classes=0):
        super().__init__()
        if classes:
            self.label_emb = nn.Embedding(classes, classes)
        self.model = nn.Sequential(*block(latent_dim + classes, 128, normalize=False), *block(128, 256),
                                   *block(256, 512), *block(512, 1024), nn.Linear(1024, PIXELS), nn.Tanh())

    def forward(self, noise, classes=None):
        if classes is not None:
            noise = torch.cat((self.label_emb(classes), noise), -1)
        return self.model(noise).view(len(noise), 1, SIZE, SIZE)


class GanDiscriminator(nn.Module):
    """gan.py's Discriminator; its final Sigmoid is in the loss (logits out)."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(PIXELS, 512), nn.LeakyReLU(0.2), nn.Linear(512, 256),
                                   nn.LeakyReLU(0.2), nn.Linear(256, 1))

    def forward(self, img, classes=None):
        return self.model(img.flatten(1)).view(-1), None


class CganDiscriminator(nn.Module):
    """cgan.py's Discriminator. Its Dropout(0.4) layers are kept for their indices at p = 0:
    genzoo leaves dropout out (Candle's CPU dropout is not seeded)."""

    def __init__(self, classes):
        super().__init__()
        self.label_embedding = nn.Embedding(classes, classes)
        self.model = nn.Sequential(nn.Linear(classes + PIXELS, 512), nn.LeakyReLU(0.2), nn.Linear(512, 512),
                                   nn.Dropout(0.0), nn.LeakyReLU(0.2), nn.Linear(512, 512), nn.Dropout(0.0),
                                   nn.LeakyReLU(0.2), nn.Linear(512, 1))

    def forward(self, img, classes):
        d_in = torch.cat((img.flatten(1), self.label_embedding(classes)), -1)
        return self.model(d_in).view(-1), None


class InfoDiscriminator(infogan_ref.Discriminator):
    """The reference's discriminator, its Q outputs as genzoo's one `(b, 12)` tensor."""

    def forward(self, img, classes=None):
        logit, q_cat, q_code = super().forward(img)
        return logit, torch.cat([q_cat, q_code], 1)


# The [gan] losses of genzoo (layers::gan), on logits.
def d_loss_of(loss, real, fake):
    if loss == "lsgan":  # cgan.py's (MSE(real, 1) + MSE(fake, 0)) / 2
        return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())
    # pytorch/examples' and the InfoGAN reference's sum (gan.py halves it)
    return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
        F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def g_loss_of(loss, fake):
    if loss == "lsgan":  # Mao et al.'s 1/2 (cgan.py's MSE(fake, 1) has none)
        return 0.5 * (fake - 1).pow(2).mean()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def info_loss_of(q, codes):
    """The reference's L_I = CE(c_cat) + 0.1 MSE(c_cont)."""
    k = infogan_ref.CATEGORIES
    return F.cross_entropy(q[:, :k], codes[:, :k].argmax(1)) + 0.1 * F.mse_loss(q[:, k:], codes[:, k:])


M64 = (1 << 64) - 1


def fnv1a(name):
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h = ((h ^ byte) * 0x100000001B3) & M64
    return h


def unit_uniform(name, n):
    """n values in [-1, 1) on a 2^-23 grid: splitmix64 of the name's hash plus 1, 2, ..., n."""
    z = np.uint64(fnv1a(name)) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24) * np.float32(2) - np.float32(1)


def formula_weights(nets, t):
    """Replaces every floating-point parameter and buffer by `shift + scale * u`, u from
    `unit_uniform` of its genzoo name, shift and scale the mean and sqrt(3) x the standard
    deviation of the reference's own initialisation (a constant where that has one value)."""
    with torch.no_grad():
        for prefix, net in nets.items():
            for k, v in net.state_dict().items():
                if not v.dtype.is_floating_point:
                    continue
                name = f"{prefix}.{k}"
                x = v.double()
                shift = np.float32(x.mean().item())
                scale = np.float32(x.std().item() * 3 ** 0.5) if v.numel() > 1 else np.float32(0)
                w = shift + scale * unit_uniform(name, v.numel())
                v.copy_(torch.from_numpy(w).view_as(v))
                t[f"init.{name}"] = torch.tensor([shift, scale])
                t[f"shape.{name}"] = torch.tensor(list(v.shape), dtype=torch.float32)


class Factors:
    """Each layer's inputs and the gradients at its outputs, call by call."""

    def __init__(self, modules):
        self.calls = {}
        for m in modules:
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                m.register_forward_hook(self._hook)

    def _hook(self, m, inputs, out):
        call = {"x": inputs[0].detach()}
        if out.requires_grad:
            out.register_hook(lambda g: call.__setitem__("g", g.detach()))
        self.calls.setdefault(m, []).append(call)

    def clear(self):
        self.calls = {}

    def of(self, m):
        """(left, right) with m.weight.grad = left^T right (reshaped), or None."""
        calls = [c for c in self.calls.get(m, []) if "g" in c]
        if not calls:
            return None
        x, g = torch.cat([c["x"] for c in calls]), torch.cat([c["g"] for c in calls])
        n = len(x)
        if isinstance(m, nn.Linear):
            return g.reshape(n, -1), x.reshape(n, -1)
        whole = m.padding == (0, 0) and m.stride == (1, 1)
        if isinstance(m, nn.ConvTranspose2d) and whole and x.shape[2:] == (1, 1):
            return x.reshape(n, -1), g.reshape(n, -1)
        if isinstance(m, nn.Conv2d) and whole and tuple(x.shape[2:]) == m.kernel_size:
            return g.reshape(n, -1), x.reshape(n, -1)
        return None


def save_gradients(t, tag, params, grads, factors):
    """The gradient of every parameter of an optimiser under `tag.`, as itself or as its factors."""
    for (name, module, key, p), grad in zip(params, grads):
        assert grad is not None, f"{name}: no gradient"
        f = factors.of(module) if key == "weight" else None
        if f is not None and f[0].numel() + f[1].numel() < p.numel():
            left, right = f
            rebuilt = (left.double().T @ right.double()).view(p.shape)
            err = ((rebuilt - grad.double()).abs().max() / grad.abs().max()).item()
            assert err < 2e-6, f"{name}: factors reproduce the gradient to {err}"
            t[f"{tag}.{name}.left"], t[f"{tag}.{name}.right"] = left, right
        else:
            t[f"{tag}.{name}"] = grad.detach().clone()


def named_params(prefix, net, keep=lambda name: True):
    """(name, module, key, parameter) of each parameter under `prefix.` that `keep` keeps."""
    out = []
    for mname, m in net.named_modules():
        for key, p in m.named_parameters(recurse=False):
            name = f"{prefix}.{mname}.{key}" if mname else f"{prefix}.{key}"
            if keep(name):
                out.append((name, m, key, p))
    return out


def digits(k, with_labels):
    images, labels = load_mnist("test")
    x = torch.from_numpy(images[k * B:(k + 1) * B].astype(np.float32) / 255).unsqueeze(1)
    return x, torch.from_numpy(labels[k * B:(k + 1) * B].astype(np.int64)) if with_labels else None


def specs():
    """Each model as genzoo's run file trains it: networks, [gan] loss, learning rates (D, G), and
    how many training steps stay within float32 rounding of torch's."""
    gan = dict(G=MlpGenerator(100), D=GanDiscriminator(), loss="non-saturating", lr=(2e-4, 2e-4), classes=0,
               head=None, steps=3, reference="PyTorch-GAN implementations/gan/gan.py")
    cgan = dict(G=MlpGenerator(100, 10), D=CganDiscriminator(10), loss="lsgan", lr=(2e-4, 2e-4), classes=10,
                head=None, steps=3, reference="PyTorch-GAN implementations/cgan/cgan.py")
    # PyTorch's default initialisation, not the reference's weights_init (N(0, 0.02)): with those
    # small weights D's features of 4 digits barely differ, its BatchNorm over the batch cancels
    # nearly all of each gradient, and torch's own float32 gradients are good to only 4e-5 of
    # their float64 values (1e-5 with these). One training step: by the second, the
    # discriminator's Adam step has amplified float32 rounding in its gradient's smallest entries
    # (an update of lr g / (|g| + 1e-8) swings by up to lr for a change of 1e-8 in g) into
    # outputs that differ by 1e-3, and by the third into different images. So three steps also run
    # in float64 on both sides (double_steps), where that rounding is 1e-16. How sensitive these
    # steps are: a LeakyReLU slope of 0.1 changed by 1.5e-8 (0.1 as a float32) moves the float64
    # losses by 3e-10 at step 1, 3e-6 at step 2 and 1e-2 at step 3, in torch against itself.
    infogan = dict(G=infogan_ref.Generator(), D=InfoDiscriminator(), loss="non-saturating", lr=(2e-4, 1e-3),
                   classes=0, head="discriminator.q_head.", steps=1, double_steps=3,
                   reference="scripts/train_infogan_reference.py (Chen et al. 2016, table 1)")
    return {"gan": gan, "cgan": cgan, "infogan": infogan}


def draw(spec):
    if spec["head"]:
        z, _, _ = infogan_ref.draw_input(B)
        z = z.view(B, -1)
        return {"noise": z[:, :infogan_ref.NOISE], "codes": z[:, infogan_ref.NOISE:]}
    out = {"noise": torch.randn(B, 100)}
    if spec["classes"]:
        out["classes"] = torch.randint(0, spec["classes"], (B,))
    return out


def generate(spec, inp):
    if "codes" in inp:
        return spec["G"](torch.cat([inp["noise"], inp["codes"]], 1).view(B, -1, 1, 1))
    return spec["G"](inp["noise"], inp.get("classes"))


def save_input(t, tag, inp):
    for k, v in inp.items():
        t[f"{tag}.{k}"] = v.float()


class Model:
    """A spec's networks, their optimiser groups (Q's head with G where the model has one, as
    AdversarialTraining::optimizers groups them) and the recorder of gradient factors."""

    def __init__(self, spec):
        self.spec, self.G, self.D = spec, spec["G"], spec["D"]
        head = spec["head"]
        in_head = (lambda n: n.startswith(head)) if head else (lambda n: False)
        self.d_params = named_params("discriminator", self.D, lambda n: not in_head(n))
        self.g_params = named_params("generator", self.G) + named_params("discriminator", self.D, in_head)
        self.factors = Factors(list(self.G.modules()) + list(self.D.modules()))

    def d_pass(self, real, labels, d_in):
        """The discriminator step's pass: D on real digits and on G(z) detached, D's loss."""
        self.factors.clear()
        fake = generate(self.spec, d_in).detach()
        real_logits, q_real = self.D(real, labels)
        fake_logits, q_fake = self.D(fake, d_in.get("classes"))
        return fake, real_logits, q_real, fake_logits, q_fake, d_loss_of(self.spec["loss"], real_logits, fake_logits)

    def g_pass(self, g_in):
        """The generator step's pass: G's loss, plus the information loss where Q predicts codes."""
        self.factors.clear()
        fake = generate(self.spec, g_in)
        logits, q = self.D(fake, g_in.get("classes"))
        adversarial = g_loss_of(self.spec["loss"], logits)
        info = info_loss_of(q, g_in["codes"]) if "codes" in g_in else None
        return fake, logits, q, adversarial, info, adversarial if info is None else adversarial + info

    def gradients(self, params, loss):
        return torch.autograd.grad(loss, [p for *_, p in params])


def first_passes(m, t, dtype, record=lambda optimizer, params, grads: None):
    """Both passes at the current weights on step 1's inputs, each optimiser's gradient after
    its own pass (given to `record` while that pass's factors are at hand): (outputs,
    {optimizer: gradients})."""
    cast = lambda d: {k: v.to(dtype) if v.is_floating_point() else v for k, v in d.items()}
    labels = t["step1.labels"].long() if "step1.labels" in t else None
    d_in, g_in = cast(inputs(t, "step1.d_input")), cast(inputs(t, "step1.g_input"))
    real = t["step1.images"].to(dtype) * 2 - 1
    fake, real_logits, q_real, fake_logits, q_fake, d_loss = m.d_pass(real, labels, d_in)
    grads = {"discriminator": m.gradients(m.d_params, d_loss)}
    record("discriminator", m.d_params, grads["discriminator"])
    out = {"fake_d": fake, "d_real_logits": real_logits, "d_fake_logits": fake_logits, "d_loss": d_loss}
    fake, logits, q, adversarial, info, g_loss = m.g_pass(g_in)
    grads["generator"] = m.gradients(m.g_params, g_loss)
    record("generator", m.g_params, grads["generator"])
    out.update({"fake_g": fake, "g_logits": logits, "g_loss": g_loss})
    if info is not None:
        out.update({"q_real": q_real, "q_fake": q_fake, "g_q": q, "info_loss": info, "g_adversarial": adversarial})
    return out, grads


def first_step(m, t):
    """The first step's passes at the initial weights, each optimiser's gradient, and how far
    torch's float32 outputs and gradients are from its float64 ones."""
    nets = {k: copy.deepcopy(m.spec[k]).double() for k in ("G", "D")}
    for net in nets.values():
        for module in net.modules():
            module._forward_hooks.clear()
    exact_out, exact = first_passes(Model(dict(m.spec, **nets)), t, torch.float64)

    def record(optimizer, params, grads):
        save_gradients(t, f"grad.{optimizer}", params, grads, m.factors)
        for (name, *_), g, g64 in zip(params, grads, exact[optimizer]):
            scale, err = g64.abs().max(), (g.double() - g64).abs().max()
            t[f"grad_exact.{optimizer}.{name}"] = torch.stack([scale, err]).float()

    out, _ = first_passes(m, t, torch.float32, record)
    t.update({f"first.{k}": v for k, v in out.items()})
    t.update({f"first_error.{k}": (v.double() - exact_out[k]).abs().max().float() for k, v in out.items()})


def inputs(t, tag):
    out = {k[len(tag) + 1:]: v for k, v in t.items() if k.startswith(tag + ".")}
    if "classes" in out:
        out["classes"] = out["classes"].long()
    return out


def draw_steps(spec, t):
    """Each training step's digits (in [0, 1]) and generator inputs."""
    for k in range(1, max(spec["steps"], spec.get("double_steps", 0)) + 1):
        images, labels = digits(k - 1, spec["classes"])
        t[f"step{k}.images"] = images
        if labels is not None:
            t[f"step{k}.labels"] = labels.float()
        save_input(t, f"step{k}.d_input", draw(spec))
        save_input(t, f"step{k}.g_input", draw(spec))


def train(m, t):
    """genzoo's AdversarialTraining step (d_steps 1) for the spec's steps: the recorded terms, and
    the generator step's gradients of the first (taken after D's first update)."""
    spec, betas = m.spec, (0.5, 0.999)
    opt_d = torch.optim.Adam([p for *_, p in m.d_params], lr=spec["lr"][0], betas=betas)
    opt_g = torch.optim.Adam([p for *_, p in m.g_params], lr=spec["lr"][1], betas=betas)
    for k in range(1, spec["steps"] + 1):
        tag = f"step{k}"
        labels = t[f"{tag}.labels"].long() if f"{tag}.labels" in t else None
        _, real_logits, _, fake_logits, _, d_loss = m.d_pass(t[f"{tag}.images"] * 2 - 1, labels,
                                                             inputs(t, f"{tag}.d_input"))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        *_, info, g_loss = m.g_pass(inputs(t, f"{tag}.g_input"))
        opt_g.zero_grad()
        g_loss.backward()
        if k == 1 and spec["steps"] > 1:
            save_gradients(t, "step1.grad.generator", m.g_params, [p.grad for *_, p in m.g_params], m.factors)
        opt_g.step()
        t.update({f"{tag}.d_loss": d_loss, f"{tag}.g_loss": g_loss, f"{tag}.d_real": real_logits.mean(),
                  f"{tag}.d_fake": fake_logits.mean()})
        if info is not None:
            t[f"{tag}.info_loss"] = info


def train_double(m, t, steps):
    """The training steps in float64 from the initial weights (f64.step<k>.* terms), and the
    networks' outputs after them (f64.after.*), on the same digits and generator inputs."""
    nets = {k: copy.deepcopy(m.spec[k]).double() for k in ("G", "D")}
    for net in nets.values():
        for module in net.modules():
            module._forward_hooks.clear()
    md = Model(dict(m.spec, **nets))
    cast = lambda d: {k: v.double() if v.is_floating_point() else v for k, v in d.items()}
    betas = (0.5, 0.999)
    opt_d = torch.optim.Adam([p for *_, p in md.d_params], lr=md.spec["lr"][0], betas=betas)
    opt_g = torch.optim.Adam([p for *_, p in md.g_params], lr=md.spec["lr"][1], betas=betas)
    for k in range(1, steps + 1):
        tag = f"step{k}"
        _, real_logits, _, fake_logits, _, d_loss = md.d_pass(t[f"{tag}.images"].double() * 2 - 1, None,
                                                              cast(inputs(t, f"{tag}.d_input")))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        *_, info, g_loss = md.g_pass(cast(inputs(t, f"{tag}.g_input")))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        t.update({f"f64.{tag}.d_loss": d_loss, f"f64.{tag}.g_loss": g_loss, f"f64.{tag}.d_real": real_logits.mean(),
                  f"f64.{tag}.d_fake": fake_logits.mean(), f"f64.{tag}.info_loss": info})
    g_in = cast(inputs(t, "step1.g_input"))
    t["f64.after.fake"] = md.G(torch.cat([g_in["noise"], g_in["codes"]], 1).view(B, -1, 1, 1))
    logits, q = md.D(t["step1.images"].double() * 2 - 1, None)
    t["f64.after.d_real_logits"], t["f64.after.q_real"] = logits, q


def after(m, t):
    """The networks after the steps, on step 1's inputs: training mode, then G in inference mode."""
    g_in, labels = inputs(t, "step1.g_input"), t.get("step1.labels")
    t["after.fake"] = generate(m.spec, g_in)
    logits, q = m.D(t["step1.images"] * 2 - 1, labels.long() if labels is not None else None)
    t["after.d_real_logits"] = logits
    if q is not None:
        t["after.q_real"] = q
    m.G.eval()
    t["after.fake_eval"] = generate(m.spec, g_in)


def build(name, spec):
    t = {}
    formula_weights({"generator": spec["G"], "discriminator": spec["D"]}, t)
    draw_steps(spec, t)
    m = Model(spec)
    # The first step's passes move BatchNorm's running statistics: training starts afresh.
    initial = [copy.deepcopy(net.state_dict()) for net in (m.G, m.D)]
    first_step(m, t)
    m.G.load_state_dict(initial[0])
    m.D.load_state_dict(initial[1])
    if spec.get("double_steps"):
        train_double(m, t, spec["double_steps"])
    train(m, t)
    if spec["steps"] > 1:
        after(m, t)
    # float32, but for the float64 run's references.
    t = {k: (v.reshape(1) if v.dim() == 0 else v).detach().contiguous() for k, v in t.items()}
    t = {k: v if k.startswith("f64.") else v.float() for k, v in t.items()}
    path = os.path.join(FIXTURES, f"{name}.safetensors")
    save_file(t, path, metadata={"torch": torch.__version__, "script": "scripts/make_gan_fixtures.py",
                                 "reference": spec["reference"], "loss": spec["loss"], "lr": str(spec["lr"]),
                                 "batch": str(B), "steps": str(spec["steps"]),
                                 "double_steps": str(spec.get("double_steps", 0))})
    print(f"{name}: {len(t)} tensors, {os.path.getsize(path) / 1024:.0f} KiB, g_loss {t['first.g_loss'].item():.4f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="*", default=["gan", "cgan", "infogan"])
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    all_specs = specs()
    for name in args.models:
        torch.manual_seed(1)
        build(name, all_specs[name])
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
