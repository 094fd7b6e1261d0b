"""bench/carry_npz.py: a dataset packed into parts small enough for a device call, unpacked to the
same arrays, and every damaged or missing piece refused in one line."""

import json

import numpy as np
import pytest

from bench.carry_npz import CarryError, check, decode_images, encode_images, main, pack, unpack


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    # Smooth images, as photos are, so that the differences compress; one gray set, labels, names.
    base = rng.integers(0, 256, (60, 1, 1, 3))
    ramp = np.arange(9)[None, :, None, None] + 2 * np.arange(11)[None, None, :, None]
    arrays = {"x_train": ((base + ramp + rng.integers(0, 3, (60, 9, 11, 3))) % 256).astype(np.uint8),
              "y_train": rng.integers(0, 100, 60),
              "x_gray": rng.integers(0, 256, (7, 4, 5, 1), dtype=np.uint8),
              "class_names": np.array(["apple", "aquarium_fish", "worm"])}
    path = tmp_path / "data.npz"
    np.savez_compressed(path, **arrays)
    return path, arrays


def test_the_image_codec_undoes_exactly_with_wrapping_values():
    images = np.array([[[[0, 255, 0], [255, 0, 255]], [[1, 254, 3], [128, 127, 0]]]], dtype=np.uint8)
    assert np.array_equal(decode_images(encode_images(images)), images)
    smooth = np.full((2, 6, 6, 3), 200, dtype=np.uint8)
    residuals = encode_images(smooth)
    assert residuals.shape == (2, 3, 6, 6) and np.count_nonzero(residuals) == 2  # green's first pixel


def test_packed_in_parts_and_unpacked_to_the_same_arrays(dataset, tmp_path):
    source, arrays = dataset
    manifest = pack(source, tmp_path / "parts", max_mb=0.0006)
    assert len(manifest["parts"]) >= 2
    assert max(p["bytes"] for p in manifest["parts"]) <= 600
    assert {a["name"]: a["codec"] for a in manifest["arrays"]}["y_train"] == "as is"
    out = tmp_path / "there" / "data.npz"
    assert main(["unpack", str(tmp_path / "parts"), str(out)]) == 0
    with np.load(out) as unpacked:
        assert unpacked.files == list(arrays)
        for name, array in arrays.items():
            assert unpacked[name].dtype == array.dtype and np.array_equal(unpacked[name], array), name


@pytest.fixture
def packed(dataset, tmp_path):
    folder = tmp_path / "parts"
    return folder, pack(dataset[0], folder, max_mb=0.0006)


def test_a_missing_part_is_named_with_the_ones_to_carry(packed, tmp_path, capsys):
    folder, manifest = packed
    (folder / "part-01.xz").unlink()
    assert main(["unpack", str(folder), str(tmp_path / "out.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / 'part-01.xz'} is missing: carry every part that")
    assert "part-00.xz, part-01.xz" in err and err.count("\n") == 1
    assert not (tmp_path / "out.npz").exists()


def test_a_check_between_calls_says_which_parts_are_whole_and_which_still_to_come(packed):
    folder, manifest = packed
    for part in manifest["parts"][1:]:
        (folder / part["file"]).unlink()
    lines = check(folder)
    assert lines[0] == f"{folder / 'part-00.xz'}: whole"
    assert lines[1:-1] == [f"{folder / p['file']}: not here yet" for p in manifest["parts"][1:]]
    assert lines[-1] == "lzma: present"
    (folder / "part-00.xz").write_bytes(b"truncated")
    with pytest.raises(CarryError, match=r"part-00.xz is damaged \(9 bytes"):
        check(folder)


def test_a_damaged_part_is_refused_and_nothing_is_written(packed, tmp_path):
    folder, _ = packed
    part = folder / "part-00.xz"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(CarryError, match=r"part-00.xz is damaged .*checksum differs\): carry it again"):
        unpack(folder, tmp_path / "out.npz")
    part.write_bytes(bytes(data[:-5]))
    with pytest.raises(CarryError, match=r"part-00.xz is damaged \(\d+ bytes, \d+ packed"):
        unpack(folder, tmp_path / "out.npz")
    assert list(tmp_path.glob("out.npz*")) == []


def test_an_array_that_does_not_unpack_to_its_checksum_is_refused(packed, tmp_path):
    folder, _ = packed
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["arrays"][0]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CarryError, match=r"x_train does not unpack to the array that was packed"):
        unpack(folder, tmp_path / "out.npz")


def test_a_missing_or_foreign_manifest_is_named(packed, tmp_path):
    folder, _ = packed
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(CarryError, match=r"manifest.json: format 99, this script reads 1"):
        unpack(folder, tmp_path / "out.npz")
    (folder / "manifest.json").unlink()
    with pytest.raises(CarryError, match=r"manifest.json is missing"):
        unpack(folder, tmp_path / "out.npz")
    with pytest.raises(CarryError, match=r"nothing.npz is not a file"):
        pack(tmp_path / "nothing.npz", tmp_path / "p")
