"""Progressive GAN reference networks in torch, laid out as facebookresearch/pytorch_GAN_zoo's PGAN
(`models/networks/progressive_conv_net.py`: GNet and DNet, whose state_dict keys genzoo's
progan.rs loads), written out here so the fixtures and the PyTorch benchmark need nothing but torch.

Conventions shared with genzoo (crates/gan-variants/src/progan.rs):
- equalized layers scale their output after the bias (the zoo): y = c (W x + b), c = gain / sqrt(fan_in),
  gain sqrt(2) everywhere (the zoo), or the official code's exceptions with official_gains;
- `alpha` is the new block's weight (0 at the start of a fade); the zoo's alpha is 1 - this one;
- minibatch standard deviation as the official TensorFlow code computes it (image i in group
  i mod (b / g), biased variance), where the zoo takes the unbiased variance and hands the values
  to consecutive images.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Equalized(nn.Module):
    """The zoo's EqualizedConv2d (kernel > 0) or EqualizedLinear (kernel None): weight ~ N(0, 1), bias 0."""

    def __init__(self, inputs, outputs, kernel=None, padding=0, gain=math.sqrt(2)):
        super().__init__()
        shape = (outputs, inputs) if kernel is None else (outputs, inputs, kernel, kernel)
        self.weight = nn.Parameter(torch.randn(shape))
        self.bias = nn.Parameter(torch.zeros(outputs))
        fan_in = inputs * (1 if kernel is None else kernel * kernel)
        self.scale = gain / math.sqrt(fan_in)
        self.kernel, self.padding = kernel, padding

    def forward(self, x):
        if self.kernel is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            y = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        return y * self.scale


def pixel_norm(x):
    return x * ((x ** 2).mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def upscale(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downscale(x):
    return F.avg_pool2d(x, 2)


def minibatch_stddev(x, group=4):
    b, c, h, w = x.shape
    g = min(group, b)
    if b % g != 0:
        g = b
    y = x.reshape(g, -1, c, h, w)
    y = ((y - y.mean(0, keepdim=True)) ** 2).mean(0)
    y = (y + 1e-8).sqrt().reshape(y.shape[0], -1).mean(1)  # (groups)
    y = y.reshape(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y], 1)


class GNet(nn.Module):
    def __init__(self, latent, depths, channels, official_gains=False, slope=0.2):
        super().__init__()
        relu = math.sqrt(2)
        dense_gain, rgb_gain = (relu / 4, 1.0) if official_gains else (relu, relu)
        self.depths, self.slope = depths, slope
        self.formatLayer = Equalized(latent, 16 * depths[0], gain=dense_gain)
        self.groupScale0 = nn.ModuleList([Equalized(depths[0], depths[0], 3, 1)])
        self.scaleLayers = nn.ModuleList()
        for level in range(1, len(depths)):
            self.scaleLayers.append(nn.ModuleList([Equalized(depths[level - 1], depths[level], 3, 1),
                                                   Equalized(depths[level], depths[level], 3, 1)]))
        self.toRGBLayers = nn.ModuleList([Equalized(d, channels, 1, 0, gain=rgb_gain) for d in depths])

    def forward(self, z, level, alpha):
        act = lambda t: F.leaky_relu(t, self.slope)
        x = act(self.formatLayer(pixel_norm(z)))
        x = pixel_norm(x.view(z.shape[0], -1, 4, 4))
        x = pixel_norm(act(self.groupScale0[0](x)))
        y = None
        for i in range(level):
            if alpha < 1 and i == level - 1:
                y = upscale(self.toRGBLayers[i](x))
            x = upscale(x)
            for conv in self.scaleLayers[i]:
                x = pixel_norm(act(conv(x)))
        x = self.toRGBLayers[level](x)
        return x if y is None else alpha * x + (1 - alpha) * y


class DNet(nn.Module):
    def __init__(self, depths, channels, group=4, official_gains=False, slope=0.2):
        super().__init__()
        relu = math.sqrt(2)
        self.group, self.slope = group, slope
        self.fromRGBLayers = nn.ModuleList([Equalized(channels, d, 1, 0) for d in depths])
        self.scaleLayers = nn.ModuleList()
        for level in range(1, len(depths)):
            self.scaleLayers.append(nn.ModuleList([Equalized(depths[level], depths[level], 3, 1),
                                                   Equalized(depths[level], depths[level - 1], 3, 1)]))
        extra = 1 if group > 0 else 0
        self.groupScaleZero = nn.ModuleList([Equalized(depths[0] + extra, depths[0], 3, 1),
                                             Equalized(16 * depths[0], depths[0])])
        self.decisionLayer = Equalized(depths[0], 1, gain=1.0 if official_gains else relu)

    def forward(self, x, level, alpha):
        act = lambda t: F.leaky_relu(t, self.slope)
        y = act(self.fromRGBLayers[level - 1](downscale(x))) if alpha < 1 and level > 0 else None
        h = act(self.fromRGBLayers[level](x))
        for i in reversed(range(level)):
            for conv in self.scaleLayers[i]:
                h = act(conv(h))
            h = downscale(h)
            if y is not None:
                h = alpha * h + (1 - alpha) * y
                y = None
        if self.group > 0:
            h = minibatch_stddev(h, self.group)
        h = act(self.groupScaleZero[0](h))
        h = act(self.groupScaleZero[1](h.flatten(1)))
        return self.decisionLayer(h)


def reals_at(x, level, alpha):
    """The official process_reals: box-downscaled to the level's side, faded with the coarser copy."""
    while x.shape[2] > 4 << level:
        x = downscale(x)
    if alpha < 1 and level > 0:
        x = alpha * x + (1 - alpha) * upscale(downscale(x))
    return x


def critic_terms(G, D, real, z, mix, level, alpha, lambda_gp=10.0, drift=0.001):
    """WGAN-GP with the drift term; returns the terms and the fake batch."""
    fake = G(z, level, alpha).detach()
    d_real, d_fake = D(real, level, alpha), D(fake, level, alpha)
    m = mix.view(-1, 1, 1, 1)
    x_hat = (m * real + (1 - m) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(x_hat, level, alpha).sum(), x_hat, create_graph=True)
    gp = ((grad.flatten(1).pow(2).sum(1) + 1e-12).sqrt() - 1).pow(2).mean()
    drift_term = d_real.pow(2).mean()
    wasserstein = d_real.mean() - d_fake.mean()
    total = -wasserstein + lambda_gp * gp + drift * drift_term
    return dict(wasserstein=wasserstein, gp=gp, drift=drift_term, d_loss=total)


def generator_loss(G, D, z, level, alpha):
    return -D(G(z, level, alpha), level, alpha).mean()
