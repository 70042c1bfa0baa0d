"""PyTorch reference for issue 'VAE end to end': the pytorch/examples MLP VAE trained exactly as
`genzoo train vae --config models/vae-50ep.toml` trains it (8,006 bundled training digits,
pixel >= 128, batch 128 with the last partial batch kept, shuffled each epoch, Adam 1e-3, loss
summed over the batch, 50 epochs), then the test NLL by importance weighting (k = 1000) on the
997 bundled test digits. Prints one JSON line.

    .venv/bin/python scripts/train_vae_reference.py [--epochs 50] [--seed 0] [--k 1000]
"""
import argparse
import json
import time

import torch

from common import VAE, binarize, load_mnist

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--k", type=int, default=1000)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--save", help="write the trained weights (safetensors, reference names)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
train_x = binarize(load_mnist("train")[0])
test_x = binarize(load_mnist("test")[0])
model = VAE()
opt = torch.optim.Adam(model.parameters(), lr=args.lr)
start = time.time()
for epoch in range(args.epochs):
    perm = torch.randperm(len(train_x))
    total = 0.0
    for i in range(0, len(train_x), args.batch_size):
        x = train_x[perm[i : i + args.batch_size]]
        rec, kl = model.elbo_terms(x, torch.randn(len(x), 20))
        loss = rec.sum() + kl.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    print(f"epoch {epoch + 1}: train neg ELBO {total / len(train_x):.3f}", flush=True)
train_seconds = time.time() - start

with torch.no_grad():
    rec, kl = model.elbo_terms(test_x, torch.randn(len(test_x), 20))
    neg_elbo = (rec + kl).mean().item()
    nll = torch.cat([-model.iw_log_prob(test_x[i : i + 100], args.k) for i in range(0, len(test_x), 100)])
if args.save:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save)
print(
    json.dumps(
        {
            "framework": "pytorch",
            "torch": torch.__version__,
            "epochs": args.epochs,
            "seed": args.seed,
            "test_neg_elbo": neg_elbo,
            "test_nll_iw": nll.mean().item(),
            "k": args.k,
            "train_seconds": train_seconds,
        }
    )
)
