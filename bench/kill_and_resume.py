"""Kill a CIFAR-100 teacher training run at random moments, start it again each time, and check that the
run that finally finishes has exactly the result of an uninterrupted run with the same seed.

    python bench/kill_and_resume.py                           # ResNet-20 teacher, 10,000 images, 4 epochs
    python bench/kill_and_resume.py --kills 10 --train-images 50000 --epochs 2

Each attempt is killed after a random time, uniform between 1 s and 2.5 / N of the uninterrupted
run's wall time (so that N attempts cover about the whole run), with SIGKILL (power loss), or with
SIGINT (Ctrl-C) one time in three. Prints every attempt,
then the final metrics and a sha256 of the trained tensors of both runs. Exit code 0 only when they match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("test_accuracy", "final_train_loss", "sampled_subnetwork_accuracy_mean")


def command(artifacts: Path, args) -> list[str]:
    return [sys.executable, "-m", "pipeline", "teacher", str(REPO / "profiles" / "cifar100_cpu.yaml"),
            "--artifacts", str(artifacts), "--checkpoint-every", str(args.checkpoint_every),
            "--set", f"data.root={args.data}", "--set", f"data.train_images={args.train_images}",
            "--set", f"teacher.arch={args.arch}", "--set", f"teacher.training.epochs={args.epochs}",
            "--set", f"student.training.epochs={args.epochs}"]


def start(cmd: list[str]) -> subprocess.Popen:
    # Background shells start children with SIGINT ignored; a Ctrl-C must reach this one.
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def saved_position(artifacts: Path) -> str:
    """Where the checkpoint that the next attempt resumes from stands."""
    saved = list((artifacts / "store" / "teacher").glob(".resume-*/training.pt"))
    if list((artifacts / "store" / "teacher").glob("*/manifest.json")):
        return "artifact finished"
    if not saved:
        return "no checkpoint yet"
    state = torch.load(saved[0], weights_only=True)
    epoch, step = state["epoch"], state["step"]
    return f"checkpoint after epoch {epoch}" if step == 0 else f"checkpoint at epoch {epoch + 1}, batch {step}"


def result(artifacts: Path) -> dict:
    manifests = [p for p in (artifacts / "store" / "teacher").glob("*/manifest.json")]
    if len(manifests) != 1:
        raise SystemExit(f"{artifacts}: expected one finished teacher artifact, found {len(manifests)}")
    manifest = json.loads(manifests[0].read_text())
    digest = hashlib.sha256()
    for path in sorted(manifests[0].parent.rglob("model.pt")):
        # The tensors themselves: the file's bytes also depend on how PyTorch laid out the archive.
        for name, tensor in sorted(torch.load(path, weights_only=True).items()):
            digest.update(name.encode() + tensor.numpy().tobytes())
    metrics = manifest["metrics"]
    return {"weights_sha256": digest.hexdigest(), "history": json.loads((manifests[0].parent / "history.json").read_text()),
            "resumed_at": metrics.get("train_resumed_at", []),
            **{k: metrics[k] for k in COMPARED if k in metrics}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("STOCHKD_CIFAR100_NPZ",
                                                         str(REPO.parent / "shared" / "datasets" / "cifar100.npz")))
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill times and signals.")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data}: CIFAR-100 .npz not found; pass --data or set STOCHKD_CIFAR100_NPZ")
    chooser = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-and-resume-"))

    print(f"teacher: {args.arch} on {args.train_images} CIFAR-100 images, {args.epochs} epochs, "
          f"checkpoint every {args.checkpoint_every} s; work in {work}")
    clock = time.perf_counter()
    done = subprocess.run(command(work / "uninterrupted", args), cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    full_s = time.perf_counter() - clock
    print(f"uninterrupted run: {full_s:.1f} s")

    killed = work / "killed"
    # Kill moments spread so that the N attempts together cover about the whole run: each attempt
    # pays its start-up again, so most are killed while training, some while starting or evaluating.
    latest = max(10.0, 2.5 * full_s / args.kills)
    for attempt in range(1, args.kills + 1):
        after = chooser.uniform(1.0, latest)
        name, number = ("SIGINT", signal.SIGINT) if chooser.random() < 1 / 3 else ("SIGKILL", signal.SIGKILL)
        process = start(command(killed, args))
        try:
            process.wait(timeout=after)
            outcome = f"finished before the signal (exit {process.returncode})"
        except subprocess.TimeoutExpired:
            process.send_signal(number)
            process.wait()
            outcome = f"exit {process.returncode}"
        said = [line for line in process.stderr.read().splitlines() if line.startswith("interrupted")]
        print(f"attempt {attempt}: {name} after {after:5.1f} s -> {outcome}; {saved_position(killed)}"
              + (f"\n    {said[0]}" if said else ""))
    clock = time.perf_counter()
    done = subprocess.run(command(killed, args), cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    print(f"final attempt ran to the end: {time.perf_counter() - clock:.1f} s")

    reference, resumed = result(work / "uninterrupted"), result(killed)
    # Only resumptions that trained and saved again are on record in the final artifact.
    print(f"resumed at (epoch, batch), as recorded: {[(r['epoch'], r['batch']) for r in resumed['resumed_at']]}")
    same = True
    for key in ("weights_sha256", *COMPARED, "history"):
        if key not in reference:
            continue
        match = reference[key] == resumed[key]
        same &= match
        shown = (lambda v: f"{len(v)} epochs") if key == "history" else (lambda v: v)
        print(f"{key:34} uninterrupted {shown(reference[key])!s:66} resumed {shown(resumed[key])!s:66} "
              f"{'same' if match else 'DIFFERENT'}")
    print("every restart ended with the uninterrupted run's result" if same else "RESULTS DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
