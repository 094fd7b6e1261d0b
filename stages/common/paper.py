"""A paper row's printed figures as profile data (``paper:``), and which of a run's models each one is
to be set beside.

The paper's columns are its own: Table I (Deep Mutual Learning) prints each peer trained alone
(Independent), in conventional mutual learning and in the proposed one; Tables II (KD) and III
(attention transfer) print Net 1 (the teacher) and Net 2 (the student) trained alone, the transfer and
the proposed transfer. Table II has two readings: one-way KD from a trained teacher (this project's
``kd`` method) and, as its caption and text call the transfer mutual, both networks trained together
with Net 2 reported (the ``dml`` method with ``mutual.peers: [Net 1, Net 2]``); each figure says which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.common.config import Section

COLUMNS = {
    "I": ("independent_1", "independent_2", "conventional_1", "conventional_2", "proposed_1", "proposed_2"),
    "II": ("independent_1", "independent_2", "transfer", "proposed"),
    "III": ("independent_1", "independent_2", "transfer", "proposed"),
}
COLUMN_NAMES = {"independent_1": "Independent, Net 1", "independent_2": "Independent, Net 2",
                "conventional_1": "Conventional ML, Net 1", "conventional_2": "Conventional ML, Net 2",
                "proposed_1": "Proposed, Net 1", "proposed_2": "Proposed, Net 2", "transfer": "KD or AT",
                "proposed": "Proposed"}


class PaperRow(Section):
    table: Literal["I", "II", "III"] = Field(..., description="The paper's table: I (DML), II (KD), III (AT).")
    nets: tuple[str, str] = Field(..., description="Net 1 and Net 2 as the paper names them, e.g. [ResNet-110, "
                                  "ResNet-20].")
    printed: dict[str, float] = Field(
        ..., description="Top-1 % as printed, by column: Table I independent_1, independent_2, conventional_1, "
        "conventional_2, proposed_1, proposed_2; Tables II and III independent_1, independent_2, transfer, proposed.")

    @model_validator(mode="after")
    def _columns_of_its_table(self) -> "PaperRow":
        allowed = COLUMNS[self.table]
        unknown = [c for c in self.printed if c not in allowed]
        if unknown:
            raise ValueError(f"paper.printed has {unknown[0]!r}, not a column of Table {self.table}; its columns: "
                             f"{', '.join(allowed)}")
        outside = [f"{c} = {v}" for c, v in self.printed.items() if not 0 <= v <= 100]
        if outside:
            raise ValueError(f"paper.printed {outside[0]}: a top-1 accuracy in percent, between 0 and 100")
        return self


def printed_beside(row: PaperRow, models: list[str], peers: tuple[str, ...] = ()) -> dict[str, dict]:
    """Each of ``models`` that a printed figure stands for: {model: {"column", "printed", "reading"}}.
    ``peers``: mutual.peers, which name the independent and DML models of Table I and of Table II's
    mutual reading."""
    printed = row.printed
    out: dict[str, dict] = {}

    def put(model: str, column: str, reading: str) -> None:
        if model in models and column in printed and model not in out:
            out[model] = {"column": column, "printed": printed[column], "reading": reading}

    independent = [f"independent_{arch}" for arch in peers[:2]]
    if row.table == "I":
        for i, model in enumerate(independent, 1):
            put(model, f"independent_{i}", "DML")
        for i in (1, 2):
            put(f"dml_conventional_{i}", f"conventional_{i}", "DML")
            put(f"dml_proposed_{i}", f"proposed_{i}", "DML")
        return out
    transfer = "kd" if row.table == "II" else "at"
    for prefix, reading in (("", "one-way, stochastic-depth teacher"), ("plain_", "one-way, plain teacher")):
        put(f"{prefix}teacher", "independent_1", reading)
        put(f"{prefix}{transfer}", "transfer", reading)
        put(f"{prefix}stochastic_{transfer}", "proposed", reading)
    put("student", "independent_2", "one-way")
    if row.table == "II":  # the mutual reading: Net 1 and Net 2 trained together, Net 2 reported
        for i, model in enumerate(independent, 1):
            put(model, f"independent_{i}", "mutual")
        put("dml_conventional_2", "transfer", "mutual")
        put("dml_proposed_2", "proposed", "mutual")
    return out
