"""PyTorch references for genzoo's image-to-image translation models, imported by
make_translation_fixtures.py and bench_pytorch.py (not run on its own):

- CycleGAN as junyanz/pytorch-CycleGAN-and-pix2pix (models/networks.py, models/cycle_gan_model.py,
  util/image_pool.py) with its CycleGAN defaults: InstanceNorm2d(affine=False,
  track_running_stats=False) so every conv has a bias, no dropout, reflection padding, N(0, 0.02)
  init with zero biases, LSGAN, cycle weight 10, identity weight 0.5 x that, image pools, one Adam
  over both generators and one over both discriminators.
- StarGAN as yunjey/stargan (model.py, solver.py): bias-free generator with affine InstanceNorm
  that tracks running statistics, PatchGAN critic with a domain-classification head, WGAN-GP,
  PyTorch's default initialisation.

The modules are written here afresh, laid out so that their state_dict keys are the reference
repositories' (`model.N...` for CycleGAN, `main.N...`, `conv1`, `conv2` for StarGAN), so weights
convert between the two by name.
"""
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# CycleGAN (junyanz)
# --------------------------------------------------------------------------------------------

def instance_norm(channels):
    """junyanz's `--norm instance`: no affine parameters, no running statistics."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + [pad1, conv3, IN, ReLU, pad1, conv3, IN](x); keys conv_block.1 and conv_block.5."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), instance_norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), instance_norm(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """junyanz ResnetGenerator: c7s1-ngf, two stride-2 3x3 downsamplings, n_blocks residual blocks
    at 4 ngf, two ConvTranspose k3 s2 p1 op1 upsamplings, c7s1-output_nc, tanh. With n_blocks = b
    the weighted layers sit at model.1, model.4, model.7, model.10 .. model.(9+b), model.(10+b),
    model.(13+b), model.(17+b)."""

    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=9):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=True), instance_norm(ngf),
                  nn.ReLU(True)]
        width = ngf
        for _ in range(2):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=True), instance_norm(2 * width),
                       nn.ReLU(True)]
            width *= 2
        layers += [ResnetBlock(width) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1, bias=True),
                       instance_norm(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """junyanz PatchGAN: conv4 s2 + LReLU(0.2); n_layers - 1 x [conv4 s2, IN, LReLU] with widths
    ndf * min(2^n, 8); conv4 s1 to ndf * min(2^n_layers, 8), IN, LReLU; conv4 s1 to one map.
    All convs padding 1 with bias. Keys model.0, model.2, model.5, ... (3 apart after the first)."""

    def __init__(self, input_nc, ndf=64, n_layers=3):
        super().__init__()
        layers = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=True),
                       instance_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_weights(net, gain=0.02):
    """junyanz init_type 'normal': Conv*/Linear weights ~ N(0, gain), biases 0 (module order)."""

    def visit(m):
        name = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.normal_(m.weight, 0.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif "BatchNorm2d" in name:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    net.apply(visit)
    return net


class ImagePool:
    """junyanz's history of generated images. Size 0 hands back its input. Otherwise each image of
    the batch, while the pool is not full, is stored and returned; once full, with probability 1/2
    (Python's `random`) a random stored image is returned and replaced by the new one, else the new
    image is returned. Returned images are detached."""

    def __init__(self, pool_size):
        self.pool_size = pool_size
        self.images = []

    def query(self, images):
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            image = image.detach().unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                slot = random.randint(0, self.pool_size - 1)
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


def lsgan_loss(prediction, target_is_real):
    """junyanz GANLoss('lsgan'): MSE against a constant 1 or 0 map."""
    target = torch.tensor(1.0 if target_is_real else 0.0).expand_as(prediction)
    return F.mse_loss(prediction, target)


def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def make_cyclegan(input_nc=3, output_nc=3, ngf=64, ndf=64, n_blocks=9, n_layers_D=3, lr=2e-4, beta1=0.5):
    """(nets, opts) as CycleGANModel builds them in training: nets = {netG_A, netG_B, netD_A,
    netD_B} initialised in that order, opts = (optimizer_G, optimizer_D)."""
    nets = {
        "netG_A": init_weights(ResnetGenerator(input_nc, output_nc, ngf, n_blocks)),
        "netG_B": init_weights(ResnetGenerator(output_nc, input_nc, ngf, n_blocks)),
        "netD_A": init_weights(NLayerDiscriminator(output_nc, ndf, n_layers_D)),
        "netD_B": init_weights(NLayerDiscriminator(input_nc, ndf, n_layers_D)),
    }
    opt_g = torch.optim.Adam(list(nets["netG_A"].parameters()) + list(nets["netG_B"].parameters()), lr=lr,
                             betas=(beta1, 0.999))
    opt_d = torch.optim.Adam(list(nets["netD_A"].parameters()) + list(nets["netD_B"].parameters()), lr=lr,
                             betas=(beta1, 0.999))
    return nets, (opt_g, opt_d)


def _grads(nets, names):
    return {f"grad.{n}.{k}": p.grad.detach().clone() for n in names for k, p in nets[n].named_parameters()}


def cyclegan_iteration(nets, opts, real_A, real_B, pool_A, pool_B, lambda_A=10.0, lambda_B=10.0, lambda_idt=0.5,
                       keep_grads=False):
    """One CycleGANModel.optimize_parameters(). pool_A holds fake A images (junyanz fake_A_pool),
    pool_B fake B images. Returns the forward tensors, the loss terms (0-d tensors) and, with
    keep_grads, `grad.<net>.<param>` for the generators (from loss_G) and the discriminators (from
    the D losses)."""
    G_A, G_B, D_A, D_B = nets["netG_A"], nets["netG_B"], nets["netD_A"], nets["netD_B"]
    opt_g, opt_d = opts
    out = {}
    # forward()
    fake_B = G_A(real_A)
    rec_A = G_B(fake_B)
    fake_A = G_B(real_B)
    rec_B = G_A(fake_A)
    # G_A and G_B, discriminators frozen.
    set_requires_grad([D_A, D_B], False)
    opt_g.zero_grad()
    if lambda_idt > 0:
        idt_A = G_A(real_B)
        loss_idt_A = F.l1_loss(idt_A, real_B) * lambda_B * lambda_idt
        idt_B = G_B(real_A)
        loss_idt_B = F.l1_loss(idt_B, real_A) * lambda_A * lambda_idt
        out.update(idt_A=idt_A, idt_B=idt_B)
    else:
        loss_idt_A = loss_idt_B = torch.zeros(())
    loss_G_A = lsgan_loss(D_A(fake_B), True)
    loss_G_B = lsgan_loss(D_B(fake_A), True)
    loss_cycle_A = F.l1_loss(rec_A, real_A) * lambda_A
    loss_cycle_B = F.l1_loss(rec_B, real_B) * lambda_B
    loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
    loss_G.backward()
    if keep_grads:
        out.update(_grads(nets, ["netG_A", "netG_B"]))
    opt_g.step()
    # D_A and D_B.
    set_requires_grad([D_A, D_B], True)
    opt_d.zero_grad()
    losses_d = {}
    for key, net, real, fake, pool in [("loss_D_A", D_A, real_B, fake_B, pool_B),
                                       ("loss_D_B", D_B, real_A, fake_A, pool_A)]:
        fake = pool.query(fake)
        loss = (lsgan_loss(net(real), True) + lsgan_loss(net(fake.detach()), False)) * 0.5
        loss.backward()
        losses_d[key] = loss
    if keep_grads:
        out.update(_grads(nets, ["netD_A", "netD_B"]))
    opt_d.step()
    out.update(fake_B=fake_B, rec_A=rec_A, fake_A=fake_A, rec_B=rec_B, loss_G_A=loss_G_A, loss_G_B=loss_G_B,
               loss_cycle_A=loss_cycle_A, loss_cycle_B=loss_cycle_B, loss_idt_A=loss_idt_A, loss_idt_B=loss_idt_B,
               loss_G=loss_G, **losses_d)
    return {k: v.detach() for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# StarGAN (yunjey)
# --------------------------------------------------------------------------------------------

def affine_instance_norm(channels):
    """yunjey's norm: affine, with running statistics (momentum 0.1, used only in eval mode)."""
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)


class ResidualBlock(nn.Module):
    """x + [conv3, IN, ReLU, conv3, IN](x), bias-free; keys main.0, main.1, main.3, main.4."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, 3, stride=1, padding=1, bias=False), affine_instance_norm(dim_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim_out, dim_out, 3, stride=1, padding=1, bias=False), affine_instance_norm(dim_out))

    def forward(self, x):
        return x + self.main(x)


class Generator(nn.Module):
    """yunjey Generator: the domain label tiled over the image and concatenated as extra channels;
    conv7 -> conv_dim, two k4 s2 p1 downsamplings, repeat_num residual blocks, two ConvTranspose k4 s2
    p1 upsamplings, conv7 -> 3, tanh; IN + ReLU after every conv but the last. Keys main.0/1, main.3/4,
    main.6/7, main.9 .. main.(8+r) (blocks), main.(9+r)/(10+r), main.(12+r)/(13+r), main.(15+r)."""

    def __init__(self, conv_dim=64, c_dim=5, repeat_num=6):
        super().__init__()
        layers = [nn.Conv2d(3 + c_dim, conv_dim, 7, stride=1, padding=3, bias=False), affine_instance_norm(conv_dim),
                  nn.ReLU(inplace=True)]
        width = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False),
                       affine_instance_norm(2 * width), nn.ReLU(inplace=True)]
            width *= 2
        layers += [ResidualBlock(width, width) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1, bias=False),
                       affine_instance_norm(width // 2), nn.ReLU(inplace=True)]
            width //= 2
        layers += [nn.Conv2d(width, 3, 7, stride=1, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x, c):
        c = c.view(c.size(0), c.size(1), 1, 1).repeat(1, 1, x.size(2), x.size(3))
        return self.main(torch.cat([x, c], dim=1))


class Discriminator(nn.Module):
    """yunjey Discriminator: repeat_num k4 s2 p1 convs with bias (conv_dim doubling) + LeakyReLU(0.01)
    as main.0, main.2, ...; `conv1` k3 p1 -> 1 (real/fake map) and `conv2` with kernel
    image_size / 2^repeat_num -> c_dim (domain logits), both bias-free."""

    def __init__(self, image_size=128, conv_dim=64, c_dim=5, repeat_num=6):
        super().__init__()
        layers = [nn.Conv2d(3, conv_dim, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        width = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            width *= 2
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(width, 1, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(width, c_dim, int(image_size / np.power(2, repeat_num)), bias=False)

    def forward(self, x):
        h = self.main(x)
        out_src = self.conv1(h)
        out_cls = self.conv2(h)
        return out_src, out_cls.view(out_cls.size(0), out_cls.size(1))


def label2onehot(labels, dim):
    out = torch.zeros(labels.size(0), dim)
    out[torch.arange(labels.size(0)), labels.long()] = 1
    return out


def classification_loss(logit, target, single_label=False):
    """solver.py: CelebA (multi-label) summed BCE with logits / batch; RaFD cross-entropy on indices."""
    if single_label:
        return F.cross_entropy(logit, target)
    return F.binary_cross_entropy_with_logits(logit, target, reduction="sum") / logit.size(0)


def gradient_penalty(y, x):
    """mean over the batch of (||dy/dx||_2 - 1)^2, the graph kept for the backward.
    Returns (penalty, dy/dx, per-image norm)."""
    dydx = torch.autograd.grad(outputs=y, inputs=x, grad_outputs=torch.ones_like(y), retain_graph=True,
                               create_graph=True, only_inputs=True)[0]
    norm = torch.sqrt(torch.sum(dydx.view(dydx.size(0), -1) ** 2, dim=1))
    return torch.mean((norm - 1) ** 2), dydx, norm


def domain_codes(label_org, label_trg, c_dim, single_label=False):
    """(c_org, c_trg) as solver.py: the labels themselves (multi-label) or their one-hot codes."""
    if single_label:
        return label2onehot(label_org, c_dim), label2onehot(label_trg, c_dim)
    return label_org.clone(), label_trg.clone()


def permuted_targets(label_org):
    """solver.py: the target domains are the batch's own labels in a random order."""
    return label_org[torch.randperm(label_org.size(0))]


def stargan_d_step(G, D, d_opt, x_real, label_org, label_trg, alpha, c_dim, lambda_cls=1.0, lambda_gp=10.0,
                   single_label=False, g_opt=None, keep_grads=False):
    """One discriminator update of solver.py's train(); alpha is the (b, 1, 1, 1) interpolation
    weight solver.py draws with torch.rand. Returns the tensors (detached), with keep_grads
    `grad.discriminator.<param>` as well."""
    c_org, c_trg = domain_codes(label_org, label_trg, c_dim, single_label)
    out_src, out_cls = D(x_real)
    d_loss_real = -torch.mean(out_src)
    d_loss_cls = classification_loss(out_cls, label_org, single_label)
    x_fake = G(x_real, c_trg)
    out_src_fake, _ = D(x_fake.detach())
    d_loss_fake = torch.mean(out_src_fake)
    x_hat = (alpha * x_real.data + (1 - alpha) * x_fake.data).requires_grad_(True)
    out_src_hat, _ = D(x_hat)
    d_loss_gp, gp_grad, gp_norm = gradient_penalty(out_src_hat, x_hat)
    d_loss = d_loss_real + d_loss_fake + lambda_cls * d_loss_cls + lambda_gp * d_loss_gp
    if g_opt is not None:
        g_opt.zero_grad()
    d_opt.zero_grad()
    d_loss.backward()
    out = {}
    if keep_grads:
        out = {f"grad.discriminator.{k}": p.grad.detach().clone() for k, p in D.named_parameters()}
    d_opt.step()
    out.update(d_out_src_real=out_src, d_out_cls_real=out_cls, x_fake=x_fake, d_out_src_fake=out_src_fake,
               x_hat=x_hat, d_out_src_hat=out_src_hat, gp_grad=gp_grad, gp_grad_norm=gp_norm,
               d_loss_real=d_loss_real, d_loss_fake=d_loss_fake, d_loss_cls=d_loss_cls, d_loss_gp=d_loss_gp,
               d_loss=d_loss)
    return {k: v.detach() for k, v in out.items()}


def stargan_g_step(G, D, g_opt, x_real, label_org, label_trg, c_dim, lambda_cls=1.0, lambda_rec=10.0,
                   single_label=False, d_opt=None, keep_grads=False):
    """One generator update of solver.py's train() (the iterations where (i + 1) % n_critic == 0).
    D is not frozen there: its gradients fill but no optimizer steps it."""
    c_org, c_trg = domain_codes(label_org, label_trg, c_dim, single_label)
    x_fake = G(x_real, c_trg)
    out_src, out_cls = D(x_fake)
    g_loss_fake = -torch.mean(out_src)
    g_loss_cls = classification_loss(out_cls, label_trg, single_label)
    x_reconst = G(x_fake, c_org)
    g_loss_rec = torch.mean(torch.abs(x_real - x_reconst))
    g_loss = g_loss_fake + lambda_rec * g_loss_rec + lambda_cls * g_loss_cls
    if d_opt is not None:
        d_opt.zero_grad()
    g_opt.zero_grad()
    g_loss.backward()
    out = {}
    if keep_grads:
        out = {f"grad.generator.{k}": p.grad.detach().clone() for k, p in G.named_parameters()}
    g_opt.step()
    out.update(g_x_fake=x_fake, g_out_src=out_src, g_out_cls=out_cls, g_x_reconst=x_reconst,
               g_loss_fake=g_loss_fake, g_loss_rec=g_loss_rec, g_loss_cls=g_loss_cls, g_loss=g_loss)
    return {k: v.detach() for k, v in out.items()}
