"""What StarGAN's generator draws where a translation changes the inversion (models/translation.md).

Reads a `genzoo sample CKPT --mode domains` grid (first column the inputs, then one column per
domain, 32 x 32 cells 2 pixels apart) and, for the targets none, inverted, red and inverted + red,
compares each translation's ink with the input's ink and with the outline of the input's strokes
(the 3 x 3 dilation less the 3 x 3 erosion of the strokes above 0.5), by correlation, the best of
the four quarter turns. The red channel carries the ink in every domain (strokes in red on black,
or black on red or white); a cell whose red channel is mostly bright is inverted.

    genzoo sample models/stargan-digits.safetensors --mode domains --from-test 200 --out domains.png
    .venv/bin/python scripts/stargan_polarity_outline.py domains.png   # needs numpy and pillow
"""
import sys

import numpy as np
from PIL import Image

SIDE, GAP = 32, 2
TARGET_COLUMNS = (1, 2, 5, 6)  # none, inverted, red, inverted + red: no quarter turn asked


def cell(grid, row, col):
    y, x = GAP + row * (SIDE + GAP), GAP + col * (SIDE + GAP)
    return grid[y:y + SIDE, x:x + SIDE]


def ink(image):
    """The strokes in [0, 1] and whether the image is inverted."""
    red = image[..., 0]
    inverted = red.mean() > 0.5
    return (1.0 - red if inverted else red), inverted


def neighbourhood(mask, reduce, fill):
    padded = np.pad(mask, 1, constant_values=fill)
    return reduce([padded[i:i + SIDE, j:j + SIDE] for i in range(3) for j in range(3)], axis=0)


def outline(strokes):
    mask = (strokes > 0.5).astype(np.float32)
    return neighbourhood(mask, np.max, 0.0) - neighbourhood(mask, np.min, 1.0)


def correlation(u, v):
    u, v = u - u.mean(), v - v.mean()
    return float((u * v).sum() / np.sqrt((u * u).sum() * (v * v).sum() + 1e-9))


def best_turn(u, v):
    return max(correlation(np.rot90(u, k), v) for k in range(4))


def main(path):
    grid = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    rows = (grid.shape[0] - GAP) // (SIDE + GAP)
    found = {True: [], False: []}
    for r in range(rows):
        source, source_inverted = ink(cell(grid, r, 0))
        edges = outline(source)
        for c in TARGET_COLUMNS:
            drawn, drawn_inverted = ink(cell(grid, r, c))
            found[source_inverted != drawn_inverted].append((best_turn(drawn, source), best_turn(drawn, edges)))
    print("translations            count  corr. with input's ink  with its outline  outline closer")
    for changes in (True, False):
        v = np.array(found[changes])
        label = "inversion changes" if changes else "inversion stays"
        print(f"{label:<22} {len(v):>6}  {v[:, 0].mean():>21.3f}  {v[:, 1].mean():>16.3f}  "
              f"{100 * (v[:, 1] > v[:, 0]).mean():>13.1f}%")


if __name__ == "__main__":
    main(sys.argv[1])
