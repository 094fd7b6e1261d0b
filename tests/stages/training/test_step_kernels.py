"""The work a training step adds beyond the network: a captured step replays each operator as a
kernel of its own, a few microseconds each on a GPU, so their number is kept from growing unnoticed."""

from bench.step_overhead_ops import step_overhead


def test_a_batch_takes_eight_kernels_and_its_count_seven():
    made, counted = step_overhead(batch=16)
    # rows, columns, the gather, uint8 to float, the normalization (3), the labels
    assert made == ["aten::add", "aten::addcmul", "aten::index", "aten::to", "aten::div_", "aten::sub_",
                    "aten::div_", "aten::index"]
    # the loss, the finite count (2), and the hits: argmax, equality, sum, add
    assert counted == ["aten::add_", "aten::isfinite", "aten::add_", "aten::argmax", "aten::eq", "aten::sum",
                       "aten::add_"]
