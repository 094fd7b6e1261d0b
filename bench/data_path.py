"""The data path of real-size training alone, against the training step it feeds, in one process.

    python bench/data_path.py                          # CPU: MobileNetV3-Large at 224 px, batch 32
    python bench/data_path.py --device cuda --batch 128 --steps 50
    python bench/data_path.py --student timm/mobilenetv3_small_100 --images 1024

It writes JPEGs cut from real photographs (scikit-learn's two sample photographs, 256 px squares),
packs them into a memory-mapped folder as pack-dataset does, then times:
- streamed batches: the pipeline's own path for a packed dataset (rows read from the memory map,
  random resized crops to the input size and flips by roi_align, normalization) on the device;
- decoding image files: Pillow opening the same images as JPEG files and resizing a crop of each
  to the input size, in one process (what a DataLoader worker does on one core);
- the training step of the student on batches already made (SGD, cross-entropy), on the device.
A data path keeps the step busy when its images/s exceed the step's; a GPU step runs many times
faster than this CPU's, which the printed ratios let one work out. Figures printed, nothing asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.config import Augmentation, DataConfig  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.training.data import load_dataset  # noqa: E402
from stages.training.device_data import DeviceData  # noqa: E402
from stages.training.image_folders import FileListing, FolderReading, ReadNotes  # noqa: E402
from stages.training.packed import pack_folder  # noqa: E402

def write_jpegs(count: int, folder: Path, side: int) -> tuple[list[Path], np.ndarray]:
    """``count`` JPEGs of real photographs at their own resolution: random squares cut from the two
    photographs scikit-learn ships (427 x 640), ``side`` pixels wide, as a camera's images decode."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        cut = int(rng.integers(side, min(photo.size) + 1))
        left, top = (int(rng.integers(0, photo.size[0] - cut + 1)), int(rng.integers(0, photo.size[1] - cut + 1)))
        path = folder / f"{i}.jpg"
        photo.resize((side, side), Image.BICUBIC, box=(left, top, left + cut, top + cut)).save(path, quality=90)
        paths.append(path)
    return paths, rng.integers(0, 100, count)


def timed(step, steps: int, device: torch.device) -> float:
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--student", default="timm/mobilenetv3_large_100")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--stored", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    device = torch.device(args.device)
    augmentation = Augmentation(crop_padding=0, horizontal_flip=True, random_resized_crop=(0.08, 1.0))
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "jpeg").mkdir()
        paths, labels = write_jpegs(args.images, scratch / "jpeg", args.stored)
        listing = FileListing((paths, labels.tolist()), (paths[:1], labels[:1].tolist()),
                              tuple(str(c) for c in range(100)))
        pack_folder(listing, scratch / "packed", FolderReading(args.stored, square=True), ReadNotes())
        data = load_dataset(DataConfig(dataset="folder", root=str(scratch / "packed"), input_size=args.size,
                                       augmentation=augmentation))
        device_data = DeviceData(data, device)
        generator = torch.Generator().manual_seed(0)

        def streamed_batch():
            index = torch.randint(0, len(data.y_train), (args.batch,), generator=generator)
            draws = device_data.draws(args.batch, augmentation, generator)
            return device_data.training_batch(index, draws, augmentation)

        streamed_s = timed(streamed_batch, args.steps, device)

        def rows_read():
            return data.x_train[torch.randint(0, len(data.y_train), (args.batch,), generator=generator).numpy()]

        rows_s = timed(rows_read, args.steps, torch.device("cpu"))

        def decoded_batch():
            from PIL import Image

            chosen = torch.randint(0, len(paths), (args.batch,), generator=generator).tolist()
            out = []
            for i in chosen:
                with Image.open(paths[i]) as image:
                    pixels = np.asarray(image.convert("RGB").resize((args.size, args.size), Image.BILINEAR,
                                                                   box=(10, 10, 200, 230)))
                out.append(pixels)
            return np.stack(out)

        decoded_s = timed(decoded_batch, args.steps, torch.device("cpu"))
        file_bytes = np.mean([p.stat().st_size for p in paths])

    torch.manual_seed(0)
    model = build_model(args.student, 100, 3, image_size=args.size).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch, targets = training_batch(args, device)
    model.train()

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(batch), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_s = timed(train_step, args.steps, device)
    rates = {"rows read from the memory map (the host's part)": args.batch / rows_s,
             "streamed batches (packed, crops on the device)": args.batch / streamed_s,
             "decoding JPEG files (one process)": args.batch / decoded_s,
             f"training step ({args.student}, {args.size} px)": args.batch / step_s}
    print(f"device {device}, batch {args.batch}, {args.size} px crops of {args.stored} px squares, "
          f"{torch.get_num_threads()} threads, JPEGs of {file_bytes / 1024:.0f} KB on average")
    for name, rate in rates.items():
        print(f"  {name:55s} {rate:8.0f} images/s")
    step_rate = args.batch / step_s
    print(f"  streamed batches / training step: {args.batch / streamed_s / step_rate:.1f}x; "
          f"JPEG decoding / training step: {args.batch / decoded_s / step_rate:.2f}x "
          f"(processes decoding JPEGs needed to keep this step busy: {step_rate / (args.batch / decoded_s):.2f})")


def training_batch(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(1)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    return images.contiguous(memory_format=torch.channels_last), torch.randint(0, 100, (args.batch,)).to(device)


if __name__ == "__main__":
    main()
