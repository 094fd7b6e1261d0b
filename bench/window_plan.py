"""The plan of one GPU window for bench/gpu_window.sh: which calls, what each carries (measured here,
against the 64 MiB a call may carry), how long each may run, and how much of the window is left for
training the row; and, after the window, the bundle it brought back made the row's next starting point.

    python bench/window_plan.py plan PROFILE     # before a window: print the plan, cut the bundle into pieces
    python bench/window_plan.py fetch PROFILE DIR [DIR1]   # after it: DIR holds call 2's files, DIR1 call 1's

A row lives in rows/NAME/ (NAME: the profile's file name; ignored by git, it is too large to travel in
every call as a tracked file would): row.tar, the last bundle (finished tasks and the checkpoints of
unfinished ones); carry/, its pieces for the next window. results/rows/NAME.md lists what the bundle
holds and how far each task has come, with the machine and the window that made it.

CIFAR-100 needs two calls (bench/carry_npz.py: two parts of 51.8 MB), so a window is at least two
calls: call 1 carries the first part (and the wheels the machine lacks) and runs GPU benches that
need no data; call 2 carries the second part and trains the row. The bundle travels in pieces in
whatever room those two calls leave, and in a call 0 before them when it does not fit there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project, installed or not
MIB = 1 << 20
CARRY_LIMIT = 64 * MIB
CARRY_SPARE = 1 * MIB  # what a call's carry is kept under its limit by, for what the count may not see
WINDOW_S = 900  # a session's device time: the machine's start, every call, every transfer and idle wait
# Estimates (not measured in a window yet; the script prints the real figures): starting a machine,
# and one call's transfers both ways.
START_S = 120
TRANSFER_S = 30
MARGIN_S = 120  # left unplanned, so that a slow start or transfer does not cost the bundle
CALL0_S, CALL1_S, CALL1_BENCH_S = 60, 40, 250
# Call 2 beside the training: unpacking CIFAR-100 and the bundle, and bundling the row at the end.
CALL2_OVERHEAD_S = 120
# Where rows live and are listed (another folder for a check that must leave the project alone).
ROWS = Path(os.environ.get("ROWS", ROOT / "rows"))
ROW_RESULTS = Path(os.environ.get("ROW_RESULTS", ROOT / "results" / "rows"))
DATA = ".data/c100x"
DEFAULT_PROFILE = "profiles/paper/table2_resnet110_resnet20.yaml"
# The wheels the device lacks, as a call carries them (another folder for a check on a machine without them).
WHEELS = os.path.relpath((ROOT / os.environ.get("DEVICE_WHEELS", ".whl/device")).resolve(), ROOT)


@dataclass
class Call:
    name: str
    does: str
    limit_s: int
    carry: list[str] = field(default_factory=list)
    carried_bytes: int = 0


def tree_bytes(root: Path = ROOT) -> int:
    """What every call carries: the tracked files and the untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, check=True,
                            capture_output=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file())


def size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def split_sizes(total: int, rooms: list[int]) -> list[int]:
    """The bundle's ``total`` bytes cut into pieces that fill ``rooms`` in order; a piece per room
    (0 where nothing is left), then one piece of what is left over."""
    pieces, left = [], total
    for room in rooms:
        piece = max(0, min(room, left))
        pieces.append(piece)
        left -= piece
    return pieces + ([] if left <= 0 else [left])


def window(profile: Path, tree: int, data: tuple[int, int], wheels: int, bundle: int, bench: bool,
           cifar100: bool = True) -> tuple[list[Call], int, list[int]]:
    """The window's calls in order, the seconds left for training in call 2 (negative: it does not
    fit) and the bundle's pieces (bytes of piece-1, piece-2 and, in a call 0, piece-0). ``data``: the
    sizes of CIFAR-100's two parts (with the manifest in the first)."""
    carried = Path(os.path.relpath(ROWS / profile.stem / "carry", ROOT))  # as a call's carry names it
    data_note = "the first CIFAR-100 part, " if cifar100 else ""
    calls = [Call("1", f"keep {data_note}the wheels and the bundle's first piece" + (
        "; GPU tests and benches of the row's step (no data needed)" if bench else ""),
        CALL1_BENCH_S if bench else CALL1_S),
        Call("2", f"join {'CIFAR-100 and ' if cifar100 else ''}the bundle, train the row until its budget, "
                  f"bundle it back", 0)]
    fixed = [tree + wheels + data[0], tree + data[1]]
    calls[0].carry = [WHEELS] + ([f"{DATA}/manifest.json", f"{DATA}/part-00.xz"] if cifar100 else [])
    calls[1].carry = [f"{DATA}/part-01.xz"] if cifar100 else []
    rooms = [max(0, CARRY_LIMIT - CARRY_SPARE - used) for used in fixed]
    pieces = split_sizes(bundle, rooms)
    for i, piece in enumerate(pieces[:2]):
        if piece:
            calls[i].carry.append(str(carried / f"piece-{i + 1}"))
    if len(pieces) > 2:
        extra = Call("0", "keep the pieces of the bundle that calls 1 and 2 have no room for", CALL0_S,
                     [str(carried / "piece-0")])
        calls.insert(0, extra)
        if pieces[2] > CARRY_LIMIT - CARRY_SPARE - tree:
            return calls, -1, pieces  # more than three calls' room: too large for one window
    for call, used, piece in zip(calls[-2:], fixed, pieces):
        call.carried_bytes = used + piece
    if len(pieces) > 2:
        calls[0].carried_bytes = tree + pieces[2]
    if bundle:
        calls[-1].carry.append(str(carried / "bundle.sha256"))
    spent = START_S + TRANSFER_S * len(calls) + sum(c.limit_s for c in calls[:-1]) + CALL2_OVERHEAD_S + MARGIN_S
    budget = WINDOW_S - spent
    calls[-1].limit_s = budget + CALL2_OVERHEAD_S
    return calls, budget, pieces


def cut_pieces(bundle: Path, folder: Path, sizes: list[int]) -> None:
    """Write the bundle's pieces (piece-1 and piece-2 for calls 1 and 2, piece-0 for call 0) and its
    SHA-256, which call 2 checks once they are joined."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("piece-*"):
        old.unlink()
    names = ["piece-1", "piece-2", "piece-0"]
    with open(bundle, "rb") as source:
        for name, count in zip(names, sizes):
            if count:
                (folder / name).write_bytes(source.read(count))
    (folder / "bundle.sha256").write_text(f"{sha256_of(bundle)}  row.tar\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plan(args) -> int:
    profile, row = args.profile, args.profile.stem
    home = ROWS / row
    bundle = home / "row.tar"
    cifar100 = not args.no_cifar100
    data = (size(ROOT / DATA / "manifest.json") + size(ROOT / DATA / "part-00.xz"), size(ROOT / DATA / "part-01.xz"))
    missing = []
    if cifar100 and not all(data):
        missing.append(f"CIFAR-100's parts in {DATA}: python bench/carry_npz.py pack ../shared/datasets/cifar100.npz "
                       f"{DATA}")
    wheels = size(ROOT / WHEELS)
    if not any((ROOT / WHEELS).glob("*.whl")):
        missing.append(f"the wheels the device lacks in {WHEELS}: bash bench/gpu_window.sh prepare")
    calls, budget, pieces = window(profile, tree_bytes(), data if cifar100 else (0, 0), wheels, size(bundle),
                                   args.bench, cifar100)
    start = (f"from {bundle}, {size(bundle) / MIB:.1f} MiB" if bundle.exists()
             else "from the start: no bundle yet")
    print(f"A window for {profile} ({start}):")
    env = [] if str(profile) == DEFAULT_PROFILE else [f"PROFILE={profile}"]
    env += [] if cifar100 else ["CIFAR100=0"]
    for call in calls:
        settings = env + (["BENCH=0"] if call.name == "1" and not args.bench else []) + (
            [f"BUDGET_S={budget}"] if call.name == "2" else [])
        print(f"  call {call.name}: timeout_s {call.limit_s}, carry {json.dumps(call.carry)} "
              f"({call.carried_bytes / MIB:.1f} of {CARRY_LIMIT // MIB} MiB with the working tree)")
        print(f"          {' '.join(settings + ['bash bench/gpu_window.sh', call.name])}")
        print(f"          ({call.does})")
    print("  each call right after the last (a machine is given back 30 s after a call ends)")
    print(f"  device time: start ~{START_S} s and transfers ~{TRANSFER_S} s a call (estimates), the calls' limits, "
          f"{MARGIN_S} s spare: {WINDOW_S} s in all")
    if budget < 60:
        print(f"  does not fit: {budget} s left for training; a smaller bundle (fewer tasks in progress) or no benches "
              f"(BENCH=0)", file=sys.stderr)
        return 1
    print(f"  training: BUDGET_S={budget} (call 2 stops the row then, each training saving its checkpoint, and "
          f"bundles it)")
    for line in missing:
        print(f"  missing: {line}", file=sys.stderr)
    if bundle.exists():
        cut_pieces(bundle, home / "carry", pieces)
        print(f"  pieces written to {home / 'carry'} ({', '.join(f'{s / MIB:.1f}' for s in pieces if s)} MiB)")
    return 1 if missing else 0


def fetch(args) -> int:
    """Join the parts call 2 brought back into the row's bundle, check every file in it, and write
    results/rows/NAME.md."""
    row, folder = args.profile.stem, args.dir
    parts = sorted(folder.glob("row.tar.part-*"))
    if not parts:
        print(f"{folder}: no row.tar.part-* (see its run.log: did the row save anything?)", file=sys.stderr)
        return 1
    home = ROWS / row
    home.mkdir(parents=True, exist_ok=True)
    joined = home / "row.tar.new"
    with open(joined, "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    with tempfile.TemporaryDirectory() as artifacts:
        check = subprocess.run([sys.executable, "-m", "pipeline", "unbundle", str(joined), "--artifacts", artifacts],
                               cwd=ROOT, capture_output=True, text=True)
    if check.returncode:
        joined.unlink()
        print(f"{folder}: the joined bundle does not check out: {check.stderr.strip() or check.stdout.strip()}",
              file=sys.stderr)
        return 1
    joined.replace(home / "row.tar")
    status = json.loads((folder / "status.json").read_text()) if (folder / "status.json").exists() else {"tasks": []}
    machine = (folder / "machine.txt").read_text().strip() if (folder / "machine.txt").exists() else ""
    listing = progress_listing(args.profile, home / "row.tar", status, machine, args.bench_dir, args.until)
    out = ROW_RESULTS / f"{row}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(listing)
    print(f"{home / 'row.tar'} ({size(home / 'row.tar') / MIB:.1f} MiB) checked; {out} written")
    return 0


def progress_listing(profile: Path, bundle: Path, status: dict, machine: str, bench_dir: Path | None,
                     until: str = "distill") -> str:
    """results/rows/NAME.md: the bundle's content and the progress of each task of the row's stages
    (up to ``until``)."""
    from pipeline.registry import stage_index

    with tarfile.open(bundle) as tar:
        index = json.load(tar.extractfile("bundle.json"))
    held = {entry["task"]: ("trained" if entry["kind"] == "artifact" else "checkpoint")
            for entry in index["entries"]}
    lines = [f"# {profile.stem}: the row's progress, window by window", "",
             f"Profile: `{profile}`. Bundle: `rows/{profile.stem}/row.tar` (git-ignored; kept in the project "
             f"folder), {size(bundle) / MIB:.1f} MiB, SHA-256 `{sha256_of(bundle)}`.",
             f"Last window fetched {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; its machine: "
             f"{'; '.join(machine.splitlines()) or 'not recorded'}.",
             "", "| task | in the bundle | progress | images/s | result |", "| --- | --- | --- | --- | --- |"]
    for task in status.get("tasks", []):
        if stage_index(task["task"].split(":")[0]) > stage_index(until):
            continue
        point = task.get("checkpoint") or {}
        finished = task.get("state") == "cached"
        done = "100%" if finished else (f"{point['done']:.0%}" if point.get("done") is not None else "0%")
        rate = f"{point['images_per_second']:,.0f}" if point.get("images_per_second") else ""
        lines.append(f"| {task['task']} | {held.get(task['task'], 'nothing')} | {done} | {rate} | "
                     f"{task.get('headline') or ''} |")
    lines += ["", f"Continue it: `PROFILE={profile} bash bench/gpu_window.sh plan`, then the calls it prints.", ""]
    if bench_dir is not None:
        lines += ["## GPU figures from call 1", ""]
        for name in sorted(bench_dir.glob("*.txt")):
            lines += [f"`{name.name}`:", "", "```", name.read_text().strip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan")
    p.add_argument("profile", type=Path)
    p.add_argument("--no-bench", dest="bench", action="store_false", help="call 1 only keeps what it carries")
    p.add_argument("--no-cifar100", action="store_true", help="a profile that does not read CIFAR-100")
    f = sub.add_parser("fetch")
    f.add_argument("profile", type=Path)
    f.add_argument("dir", type=Path, help="the files call 2 brought back")
    f.add_argument("bench_dir", type=Path, nargs="?", help="the files call 1 brought back")
    f.add_argument("--until", default="distill", help="the row's last stage, as call 2 ran it")
    args = parser.parse_args()
    return plan(args) if args.command == "plan" else fetch(args)


if __name__ == "__main__":
    sys.exit(main())
