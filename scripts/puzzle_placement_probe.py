"""Probes of Puzzle-GAN's patch placement (models/puzzle.md): a numpy replica of
`layers::placement` (cost `mean |g[box] - p| + 1 x (1 - mean m[box])`, each patch's 48 cheapest
places, the cheapest arrangement with no two boxes overlapping) that reads `genzoo sample CKPT
--mode puzzle` grids and adds one of two terms to an arrangement's cost:

- `--ink-order L`: key patches are the greedy windows of most ink, so in the image with the
  patches pasted, patch j's window must hold at least as much ink as any window overlapping none
  of patches 1..j-1; L times the summed shortfall (per pixel), over the 64 cheapest arrangements;
- `--seam MU,TAU`: MU times the mean |difference| across the shared edge of two touching boxes,
  TAU for two boxes that do not touch (81% of key-patch pairs touch).

Several grids (the same digits, other `--seed`s) are averaged into one G image and mask first.
Error: mean |placed - real| over the true boxes; exact: patches placed on their own box.

    genzoo sample models/puzzle.safetensors --mode puzzle --from-test 500 --patches 3 \\
        --data DIR --seed 1 --out grid-1.png           # DIR: an IDX folder, see models/puzzle.md
    .venv/bin/python scripts/puzzle_placement_probe.py grid-1.png [grid-2.png ...] --limit 100 \\
        [--ink-order 1] [--seam 1,0.1]                  # needs numpy and pillow
"""
import argparse
import itertools

import numpy as np
from PIL import Image

SIDE, GAP, PATCH, CANDIDATES, RERANKED = 32, 2, 10, 48, 64
ROWS = 5  # patches on black, G's mask, G's image, placed, real


def load(path):
    grid = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    n = (grid.shape[1] - GAP) // (SIDE + GAP)
    at = lambda i: GAP + i * (SIDE + GAP)
    return np.array([[grid[at(r):at(r) + SIDE, at(i):at(i) + SIDE] for i in range(n)] for r in range(ROWS)])


def window_ink(image):
    table = np.zeros((SIDE + 1, SIDE + 1))
    table[1:, 1:] = image.cumsum(0).cumsum(1)
    p = PATCH
    return table[p:, p:] - table[:-p, p:] - table[p:, :-p] + table[:-p, :-p]  # [y, x]


def overlap(a, b):
    return abs(a[0] - b[0]) < PATCH and abs(a[1] - b[1]) < PATCH


def key_patches(image, k):
    """The greedy non-overlapping windows of most ink, as `runner::data::patches` chooses them."""
    ink, chosen = window_ink(image), []
    for _ in range(k):
        free = [(ink[y, x], (x, y)) for y in range(ink.shape[0]) for x in range(ink.shape[1])
                if not any(overlap((x, y), c) for c in chosen) and ink[y, x] > 1e-6]
        if not free:
            break
        chosen.append(max(free, key=lambda t: t[0])[1])
    return chosen


def cheapest_places(g, m, crop):
    n = SIDE - PATCH + 1
    cost = np.array([[np.abs(g[y:y + PATCH, x:x + PATCH] - crop).mean() + 1.0 - m[y:y + PATCH, x:x + PATCH].mean()
                      for x in range(n)] for y in range(n)])
    return [(cost.flat[o], (o % n, o // n)) for o in np.argsort(cost, axis=None)[:CANDIDATES]]


def pasted(g, crops, boxes):
    image = g.copy()
    for crop, (x, y) in zip(crops, boxes):
        image[y:y + PATCH, x:x + PATCH] = crop
    return image


def ink_order_shortfall(image, crops, boxes):
    ink = window_ink(image)
    ys, xs = np.mgrid[0:ink.shape[0], 0:ink.shape[1]]
    allowed, shortfall = np.ones(ink.shape, bool), 0.0
    for crop, (x, y) in zip(crops, boxes):
        shortfall += max(0.0, (ink * allowed).max() - crop.sum())
        allowed &= ~((abs(xs - x) < PATCH) & (abs(ys - y) < PATCH))
    return shortfall / PATCH ** 2


def seam(ca, a, cb, b):
    """Mean |difference| across the shared edge of touching boxes a and b, else None."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) == PATCH and abs(dy) < PATCH:
        if dx < 0:
            return seam(cb, b, ca, a)
        lo, hi = max(0, dy), min(PATCH, PATCH + dy)
        return np.abs(ca[lo:hi, -1] - cb[lo - dy:hi - dy, 0]).mean()
    if abs(dy) == PATCH and abs(dx) < PATCH:
        if dy < 0:
            return seam(cb, b, ca, a)
        lo, hi = max(0, dx), min(PATCH, PATCH + dx)
        return np.abs(ca[-1, lo:hi] - cb[0, lo - dx:hi - dx]).mean()
    return None


def place(g, m, crops, args):
    lists = [cheapest_places(g, m, crop) for crop in crops]
    arrangements = []
    for combo in itertools.product(*lists):
        boxes = [b for _, b in combo]
        if any(overlap(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i)):
            continue
        cost = sum(c for c, _ in combo)
        if args.seam:
            mu, tau = args.seam
            for i, j in itertools.combinations(range(len(boxes)), 2):
                s = seam(crops[i], boxes[i], crops[j], boxes[j])
                cost += tau if s is None else mu * s
        arrangements.append((cost, boxes))
    if not arrangements:
        return [l[0][1] for l in lists]
    arrangements.sort(key=lambda t: t[0])
    if args.ink_order:
        arrangements = [(c + args.ink_order * ink_order_shortfall(pasted(g, crops, b), crops, b), b)
                        for c, b in arrangements[:RERANKED]]
    return min(arrangements, key=lambda t: t[0])[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("grids", nargs="+")
    p.add_argument("--patches", type=int, default=3)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--ink-order", type=float, default=0.0)
    p.add_argument("--seam", type=lambda s: tuple(map(float, s.split(","))))
    args = p.parse_args()
    grids = [load(path)[:, :args.limit] for path in args.grids]
    g, m, real = np.mean([x[2] for x in grids], 0), np.mean([x[1] for x in grids], 0), grids[0][4]
    errors, exact, total = [], 0, 0
    for i in range(real.shape[0]):
        boxes = key_patches(real[i], args.patches)
        crops = [real[i][y:y + PATCH, x:x + PATCH] for x, y in boxes]
        placed = place(g[i], m[i], crops, args)
        mask = np.zeros((SIDE, SIDE), bool)
        for x, y in boxes:
            mask[y:y + PATCH, x:x + PATCH] = True
        errors.append(np.abs(pasted(g[i], crops, placed) - real[i])[mask].mean())
        exact += sum(tuple(a) == tuple(b) for a, b in zip(placed, boxes))
        total += len(boxes)
    print(f"{real.shape[0]} digits, {args.patches} patches: error in the mask {np.mean(errors):.4f}, "
          f"placed exactly {exact / total:.1%}")


if __name__ == "__main__":
    main()
