"""The README's commands run as written, at smoke size (the only changes: the smoke experiment on
the test fixture, and analysis settings sized for its 300 images)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import REPO, data_overrides


def readme_pipeline() -> list[list[str]]:
    """The commands of the README's pipeline block, split as a shell would."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## The pipeline in five commands\n\n```bash\n(.*?)```", text, re.S)
    assert block, "the README has no pipeline block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def smoke_sized(args: list[str], root, sums) -> list[str]:
    command = args[2]
    if command == "dcgan_xai.train":
        assert "experiment=mnist64" in args
        args = [a for a in args if a != "experiment=mnist64"]
        return [*args, "experiment=smoke", *data_overrides(root, sums),
                f"hydra.searchpath=[file://{REPO}/conf]"]  # fmt: skip
    if command in ("dcgan_xai.analyze", "dcgan_xai.aggregate"):
        return [*args, "k=1", "figure_epochs=[1,2]", "fid_samples=50", "fid_draws=1",
                "classifier_epochs=10", "min_accuracy=0.9"]  # fmt: skip
    return args


@pytest.mark.slow
def test_the_readme_pipeline_runs_as_written(tmp_path, mnist_fixture):
    root, sums = mnist_fixture
    lines = readme_pipeline()
    assert [a[:3] for a in lines] == [
        ["python", "-m", f"dcgan_xai.{c}"]
        for c in ("train", "analyze", "curate", "train", "aggregate")
    ]
    for args in lines:
        done = subprocess.run([sys.executable, *smoke_sized(args, root, sums)[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, (args, done.stderr[-3000:])
    manifest = tmp_path / "runs/base/curation/t70/manifest.csv"
    excluded = json.loads((tmp_path / "runs/curated/exclusion.json").read_text())
    assert excluded["manifest"] == str(manifest.resolve())
    assert (tmp_path / "runs/base/analysis/selection.json").is_file()
    compared = json.loads((tmp_path / "runs/compare/compare.json").read_text())
    assert compared[0]["vs_first"] == "(the first run)"  # the curated run judged by the tie rule:
    assert re.fullmatch(r"-?[0-9.]+ ± (n/a|[0-9.]+) \((win|tie|loss)\)", compared[1]["vs_first"])
