"""The one table of scripts/gpu_check.sh, from the files it wrote into OUT_DIR (Markdown).

    python3 scripts/gpu_check_report.py OUT_DIR
"""
import glob
import json
import math
import os
import re
import sys

# The loss each short training run logs, and whether it should fall (a GAN's need not).
TRAINED = {"vae": ("neg_elbo", True), "pixelcnn": ("nll", True), "dcgan": ("d_loss", False)}


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def short(message, limit=240):
    """An error message cut to fit a table cell (the whole one is in OUT_DIR)."""
    message = message.replace("|", "/")
    return message if len(message) <= limit else message[:limit] + " ..."


def load_json(path):
    text = read(path)
    try:
        return json.loads(text[text.index("{"):]) if "{" in text else None
    except ValueError:
        return None


def op_rows(out):
    text = read(os.path.join(out, "cuda_matches_cpu.txt"))
    lines = ["## Fused CPU ops against CUDA (relative max difference)", "",
             "| op | forward | gradients |", "|---|---|---|"]
    for m in re.finditer(r"^cuda-vs-cpu (.+?)\s+forward (\S+)\s+gradients (\S+)$", text, re.M):
        lines.append(f"| {m[1]} | {m[2]} | {m[3]} |")
    for m in re.finditer(r"^cuda-vs-cpu (\S+)\s+after 3 steps (\S+)$", text, re.M):
        lines.append(f"| {m[1]} (3 steps) | {m[2]} | |")
    results = re.findall(r"^test result: .*$", text, re.M)
    failures = re.findall(r"^test (\S+) \.\.\. FAILED$", text, re.M)
    lines += ["", results[-1] if results else "no test result (see cuda_matches_cpu.txt)"]
    lines += [f"FAILED: {f}" for f in failures]
    return lines


def bench_rows(out):
    lines = ["## Training workloads on CUDA (median of the pairs; images/s)", "",
             "| workload | genzoo | PyTorch | ratio | genzoo GPU MiB | PyTorch GPU MiB |", "|---|---|---|---|---|---|"]
    for line in read(os.path.join(out, "bench.jsonl")).splitlines():
        r = json.loads(line)
        if "error" in r:
            lines.append(f"| {r['workload']} | failed: {short(r['error'])} | | | | |")
            continue
        lines.append(f"| {r['workload']} | {r['genzoo_images_per_sec']:.1f} | {r['pytorch_images_per_sec']:.1f} | "
                     f"{r['ratio']:.2f} | {r.get('genzoo_gpu_mib', 0):.0f} | {r.get('pytorch_gpu_mib', 0):.0f} |")
    return lines


def loss_trend(out, name):
    key, should_fall = TRAINED[name]
    values = []
    for line in read(os.path.join(out, f"train-{name}.log.jsonl")).splitlines():
        entry = json.loads(line)
        if entry.get("type") == "step" and key in entry:
            values.append(entry[key])
    if len(values) < 2:
        return "no log"
    first, last = values[0], sum(values[-3:]) / len(values[-3:])
    finite = all(math.isfinite(v) for v in values)
    verdict = ("falls" if last < first else "DOES NOT FALL") if should_fall else ("finite" if finite else "NOT FINITE")
    return f"{key} {first:.2f} -> {last:.2f} ({verdict})"


def metrics(report):
    """name -> value of an eval --json report: likelihood terms (nats) and sample metrics."""
    if report is None:
        return {}
    found = {m["name"]: m["nats"] for m in report.get("metrics", [])}
    samples = (report.get("sample_quality") or {}).get("samples") or {}
    for k in ("frechet_distance", "classifier_score"):
        if samples.get(k) is not None:
            found[k] = samples[k]
    return found


def eval_rows(out):
    lines = ["## The same checkpoint evaluated on the CPU and on CUDA", "",
             "| checkpoint | training | metric | CPU | CUDA |", "|---|---|---|---|---|"]
    labels = sorted({os.path.basename(p)[5:].rsplit("-", 1)[0] for p in glob.glob(os.path.join(out, "eval-*-*.json"))})
    for label in labels:
        cpu = metrics(load_json(os.path.join(out, f"eval-{label}-cpu.json")))
        cuda = metrics(load_json(os.path.join(out, f"eval-{label}-cuda.json")))
        trained = label.removeprefix("trained-")
        training = loss_trend(out, trained) if label.startswith("trained-") else "shipped (CPU)"
        if not cpu and not cuda:
            err = read(os.path.join(out, f"eval-{label}-cuda.err")).strip().splitlines()
            lines.append(f"| {label} | {training} | failed: {short(err[-1]) if err else '?'} | | |")
        for name in sorted(set(cpu) | set(cuda)):
            c, g = cpu.get(name), cuda.get(name)
            lines.append(f"| {label} | {training} | {name} | {c if c is None else f'{c:.3f}'} | "
                         f"{g if g is None else f'{g:.3f}'} |")
    samples = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "sample-*.txt")))
    failed = [s for s in samples if not read(os.path.join(out, s)).rstrip().endswith("exit 0")]
    lines += ["", f"sample grids: {len(samples) - len(failed)} of {len(samples)} drawn"
              + (f"; failed: {', '.join(failed)}" if failed else "")]
    return lines


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "gpu-check"
    env = read(os.path.join(out, "check.log")).splitlines()
    lines = ["# GPU check", ""] + [f"    {line}" for line in env[1:4]] + [""]
    for part in (op_rows, bench_rows, eval_rows):
        lines += part(out) + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
