"""A run's CSV tables: one generic :class:`Table` (columns, keys, parsing, reading, merging)
and the two a training writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dcgan_xai.files import read_table, write_csv
from dcgan_xai.runs.layout import RunDir

RESUME_HINT = "delete that line (a resumed run writes the rows of the epochs it trains again)"


@dataclass(frozen=True)
class Table:
    """A CSV table of a run (at ``where`` inside it): its columns, the key columns (one row per
    key, the newest wins) and its integer and float columns (the others stay text)."""

    where: str
    fields: tuple[str, ...]
    keys: tuple[str, ...]
    ints: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()

    def parse(self, raw: dict[str, str]) -> dict[str, Any]:
        """A row with its numbers parsed."""
        row: dict[str, Any] = dict(raw)
        row.update({k: int(raw[k]) for k in self.ints})
        row.update({k: float(raw[k]) for k in self.floats})
        return row

    def key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in self.keys)

    def read(self, run: RunDir) -> list[dict[str, Any]]:
        """The run's rows, numbers parsed, sorted by key; none where the table is missing."""
        path = run.root / self.where
        if not path.is_file():
            return []
        return sorted(read_table(path, self.parse, hint=RESUME_HINT), key=self.key)

    def update(
        self, run: RunDir, rows: list[dict[str, Any]], keep_through: int | None = None
    ) -> None:
        """Merge ``rows`` into the run's table; rows of epochs after ``keep_through`` are
        dropped first (a resumed run redoes them)."""
        old = [r for r in self.read(run) if keep_through is None or r["epoch"] <= keep_through]
        merged = {self.key(r): r for r in [*old, *rows]}
        write_csv(run.root / self.where, self.fields, [merged[k] for k in sorted(merged)])


_SCORES = [f"{probe}_{name}" for probe in ("real", "fake")
           for name in ("focus_mean", "focus_std", "focus_nondeg", "focus_chance",
                        "coverage_mean", "coverage_std", "degenerate", "flagged")]  # fmt: skip
# gradcam/scores.csv: one row per (epoch, method, BN mode, layer)
SCORES = Table("gradcam/scores.csv", ("epoch", "method", "bn_mode", "layer", *_SCORES,
               "d_real", "d_fake"), ("epoch", "method", "bn_mode", "layer"), ints=("epoch",),
               floats=(*_SCORES, "d_real", "d_fake"))  # fmt: skip
# quality/scores.csv: one row per (epoch, generated set)
QUALITY = Table("quality/scores.csv", ("epoch", "draw", "noise_seed", "samples", "fid", "kid",
                "kid_std", "reference", "classifier_accuracy", "classifier_md5"),
                ("epoch", "draw"), ints=("epoch", "draw", "noise_seed", "samples"),
                floats=("fid", "kid", "kid_std", "classifier_accuracy"))  # fmt: skip


def score_rows(epoch: int, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``scores.csv`` rows of one explanation record (one per layer)."""
    return [
        {
            "epoch": epoch,
            "method": record["method"],
            "bn_mode": record["bn_mode"],
            "layer": name,
            **record["summary"][name],
            "d_real": record["d_real"],
            "d_fake": record["d_fake"],
        }
        for name in record["layers"]
    ]
