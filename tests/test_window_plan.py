"""bench/window_plan.py: a GPU window's calls fit what a call may carry and the window's time, and the
bundle's pieces join back into the bundle."""

from pathlib import Path

from bench import window_plan as plan
from bench.window_plan import CARRY_LIMIT, CARRY_SPARE, MIB, WINDOW_S, cut_pieces, sha256_of, split_sizes, window

MB = 1_000_000
ROW = Path("profiles/paper/table2_resnet110_resnet20.yaml")
# Measured: the working tree, CIFAR-100's two parts (bench/carry_npz.py), a ResNet-110 checkpoint.
TREE, DATA, WHEELS, CHECKPOINT = 1.7 * MB, (51.8 * MB, 51.8 * MB), 2.5 * MB, 13.9 * MB


def test_a_bundle_fills_the_room_calls_1_and_2_leave_in_order():
    assert split_sizes(10, [4, 8]) == [4, 6]
    assert split_sizes(3, [4, 8]) == [3, 0]
    assert split_sizes(20, [4, 8]) == [4, 8, 8]


def test_one_teacher_in_progress_travels_in_the_two_data_calls_and_two_need_a_call_0():
    calls, budget, pieces = window(ROW, int(TREE), tuple(map(int, DATA)), int(WHEELS), int(CHECKPOINT), bench=True)
    assert [c.name for c in calls] == ["1", "2"] and sum(pieces) == int(CHECKPOINT) and len(pieces) == 2
    assert all(c.carried_bytes <= CARRY_LIMIT - CARRY_SPARE for c in calls)
    assert "rows/table2_resnet110_resnet20/carry/piece-2" in calls[1].carry
    two = 2 * int(CHECKPOINT)  # both teachers in progress: more than the room the data leaves
    calls, budget_with_call_0, pieces = window(ROW, int(TREE), tuple(map(int, DATA)), int(WHEELS), two, bench=True)
    assert [c.name for c in calls] == ["0", "1", "2"] and sum(pieces) == two
    assert all(c.carried_bytes <= CARRY_LIMIT - CARRY_SPARE for c in calls)
    assert 60 < budget_with_call_0 < budget  # call 0 costs training time, and leaves some


def test_every_second_of_the_window_is_planned_and_call_2_ends_before_it():
    for bench in (True, False):
        calls, budget, _ = window(ROW, int(TREE), tuple(map(int, DATA)), int(WHEELS), 0, bench=bench)
        spent = plan.START_S + len(calls) * plan.TRANSFER_S + sum(c.limit_s for c in calls) + plan.MARGIN_S
        assert spent == WINDOW_S and calls[-1].limit_s == budget + plan.CALL2_OVERHEAD_S
    assert budget > 400  # without the benches, most of the window trains


def test_a_bundle_too_large_for_three_calls_does_not_fit_one_window():
    _, budget, _ = window(ROW, int(TREE), tuple(map(int, DATA)), int(WHEELS), 120 * MIB, bench=False)
    assert budget < 0


def test_the_pieces_join_into_the_bundle(tmp_path):
    bundle = tmp_path / "row.tar"
    bundle.write_bytes(bytes(range(256)) * 1000)
    cut_pieces(bundle, tmp_path / "carry", [100_000, 50_000, 106_000])
    joined = b"".join((tmp_path / "carry" / name).read_bytes() for name in ("piece-1", "piece-2", "piece-0"))
    assert joined == bundle.read_bytes()
    assert (tmp_path / "carry" / "bundle.sha256").read_text() == f"{sha256_of(bundle)}  row.tar\n"
