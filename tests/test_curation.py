import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from dcgan_xai.analysis.curation import curate_run, flag_images
from dcgan_xai.config import CurationSettings
from dcgan_xai.data.exclusion import read_manifest
from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.data.sources import FILES
from dcgan_xai.errors import UserError
from dcgan_xai.files import file_digest, read_csv
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.training import build_datamodule, train
from dcgan_xai.xai import coverage


def test_flag_rule_at_the_threshold_edges():
    maps = torch.zeros(3, 10, 10)
    maps[0].view(-1)[:70] = 0.5  # coverage exactly 0.7: not flagged (the rule is > 0.7)
    maps[1].view(-1)[:71] = 1.0  # 0.71: flagged
    maps[2].view(-1)[:69] = 0.9  # 0.69
    maps[2].view(-1)[69] = 0.4999  # below the pixel threshold
    cov = coverage(maps)
    assert torch.allclose(cov, torch.tensor([0.70, 0.71, 0.69]))
    assert flag_images(cov, 0.7).tolist() == [False, True, False]
    assert flag_images(cov, 0.0).tolist() == [True, True, True]
    with pytest.raises(
        UserError, match=r"flag_threshold=1.5 is not allowed; it must be in \[0, 1\]"
    ):
        flag_images(cov, 1.5)


@pytest.fixture(scope="session")
def curated(smoke_run, mnist_fixture):
    root, _ = mnist_fixture
    before = {name: file_digest(root / name) for name in FILES.values()}
    first = curate_run(
        smoke_run["run_dir"],
        CurationSettings(epoch=2, flag_threshold=0.7, batch_size=64, progress=False),
    )
    rows, _ = read_manifest(f"{first['dir']}/manifest.csv")
    median = float(torch.tensor([r["coverage"] for r in rows]).nanmedian())  # unscored: NaN
    half = curate_run(smoke_run["run_dir"], CurationSettings(epoch=2, flag_threshold=median, batch_size=64, name="half",
                      progress=False))  # fmt: skip
    return first, half, before


def test_manifest_round_trips_and_summary_records_everything(curated, smoke_run):
    first, _, _ = curated
    rows, summary = read_manifest(f"{first['dir']}/manifest.csv")
    assert len(rows) == summary["total"] == 300
    assert [r["index"] for r in rows] == list(range(300))
    assert summary["flagged"] == sum(r["flagged"] for r in rows)
    assert all(r["flagged"] == (r["coverage"] > 0.7) for r in rows)
    assert summary["settings"]["flag_threshold"] == 0.7 and summary["settings"]["layer"] == "block3"
    assert len(summary["checkpoint_sha256"]) == 64
    assert summary["fingerprint"]["split"] == "train" and summary["fingerprint"]["size"] == 300
    assert sum(summary["flagged_per_digit"].values()) == summary["flagged"]
    for name in ("coverage_hist.png", "flagged_examples.png"):
        assert (RunDir(smoke_run["run_dir"]).curation(first["dir"].split("/")[-1]) / name).is_file()


def test_source_data_is_untouched(curated, mnist_fixture):
    root, _ = mnist_fixture
    _, _, before = curated
    assert {name: file_digest(root / name) for name in FILES.values()} == before


def test_exclude_removes_exactly_the_flagged_images(curated, smoke_cfg, tmp_path, caplog):
    _, half, _ = curated
    manifest = f"{half['dir']}/manifest.csv"
    rows, _ = read_manifest(manifest)
    flagged = {r["index"] for r in rows if r["flagged"]}
    assert 0 < len(flagged) < 300
    cfg = smoke_cfg(
        "data.limit=null", f"data.exclude={manifest}", "trainer.max_epochs=1", "callbacks=none"
    )
    with caplog.at_level(logging.INFO):
        result = train(cfg, tmp_path)
    assert result["train_images"] == 300 - len(flagged)
    said = f"data: {len(flagged)} training images left out, as {manifest} flags them"
    assert said in caplog.messages
    record = json.loads((tmp_path / "exclusion.json").read_text())
    assert record["excluded"] == len(flagged) and record["fingerprint"]["size"] == 300
    from dcgan_xai.data.exclusion import load_exclusion

    exclude = load_exclusion(manifest, record["fingerprint"])
    dm = build_datamodule(cfg, exclude)
    dm.setup()
    assert set(dm.train_set.indices.tolist()) == set(range(300)) - flagged


def _edit(manifest_dir, tmp_path, name, rows_fn=None, summary_fn=None):
    out = tmp_path / name
    shutil.copytree(manifest_dir, out)
    if rows_fn:
        with open(out / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        fields, rows = rows_fn(rows)
        with open(out / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    if summary_fn:
        s = json.loads((out / "summary.json").read_text())
        summary_fn(s)
        (out / "summary.json").write_text(json.dumps(s))
    return out / "manifest.csv"


def _all_flagged(rows):
    return list(rows[0]), [dict(r, flagged="True") for r in rows]


def _no_coverage(rows):
    return ["index", "label", "focus", "flagged"], [
        {k: r[k] for k in ("index", "label", "focus", "flagged")} for r in rows
    ]


def _other_data(s):
    s["fingerprint"]["images_md5"] = "f" * 32


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01\xff\xfe binary", r"is not a readable curation manifest \(UnicodeDecodeError"),
        ("index,label,coverage,focus,flagged\n0,1,0.5,0.5,caf\xe9\n".encode("latin-1"),
         r"is not a readable curation manifest \(UnicodeDecodeError"),
        (b"index,label,coverage,focus,flagged\n0,1,0.5,0.5,maybe\n",
         r"line 2 is damaged \(ValueError: flagged='maybe' is not true, false, 1 or 0\); write it again"),
        (b"index,label,coverage,focus,flagged\n0,1,0.5,0.5," + b"x" * 200_000 + b"\n", "field larger than field limit"),
    ],
)  # fmt: skip
def test_unreadable_manifests_are_one_line_errors(curated, tmp_path, content, message):
    first, _, _ = curated
    manifest = _edit(first["dir"], tmp_path, "bad")
    manifest.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_manifest(manifest)


def test_a_manifest_saved_with_a_bom_reads_like_one_without(curated, tmp_path):
    first, _, _ = curated
    manifest = _edit(first["dir"], tmp_path, "bom")
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    with_bom, plain = read_manifest(manifest)[0], read_manifest(f"{first['dir']}/manifest.csv")[0]
    assert [r["index"] for r in with_bom] == [r["index"] for r in plain]
    assert [r["flagged"] for r in with_bom] == [r["flagged"] for r in plain]


def test_curate_names_stay_inside_the_run(smoke_run, tmp_path):
    for name in (str(tmp_path / "outside"), "../up", ""):
        with pytest.raises(UserError, match="must be a plain folder name"):
            curate_run(smoke_run["run_dir"], CurationSettings(epoch=2, name=name, progress=False))
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize(
    "case, rows_fn, summary_fn, message",
    [
        ("all", _all_flagged, None, "flags all 300 images; nothing would be left to train on"),
        (
            "malformed",
            _no_coverage,
            None,
            "manifest.csv has no column 'coverage'; it is not a curation manifest this project wrote",
        ),
        ("other", None, _other_data, "was made for other data \\(train, 300 images, md5 ffff"),
    ],
)
def test_bad_manifests_are_refused_before_training(
    curated, smoke_cfg, tmp_path, case, rows_fn, summary_fn, message
):
    first, _, _ = curated
    manifest = _edit(first["dir"], tmp_path, case, rows_fn, summary_fn)
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match=message):
        train(smoke_cfg("data.limit=null", f"data.exclude={manifest}"), run_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "config.yaml").exists()


def test_resume_refuses_a_changed_exclusion_manifest(curated, smoke_cfg, tmp_path):
    """Same path, new content: the resumed run would train on other images."""
    first, half, _ = curated
    shutil.copytree(half["dir"], tmp_path / "manifest")
    manifest = tmp_path / "manifest" / "manifest.csv"
    run_dir = tmp_path / "run"
    args = ("data.limit=null", f"data.exclude={manifest}", "callbacks=none")
    train(smoke_cfg(*args, "trainer.max_epochs=1"), run_dir)
    record = (run_dir / "exclusion.json").read_text()
    for name in ("manifest.csv", "summary.json"):
        shutil.copy(Path(first["dir"]) / name, manifest.parent / name)
    with pytest.raises(UserError, match=r"resume=true but the exclusion manifest .* is not the one "
                       r"this run started with \(manifest_md5, excluded changed"):  # fmt: skip
        train(smoke_cfg(*args, "trainer.max_epochs=2", "resume=true"), run_dir)
    assert (run_dir / "exclusion.json").read_text() == record
    assert RunDir(run_dir).checkpoint_epochs() == [1]


def test_epoch_selected_needs_an_analysis(smoke_cfg, tmp_path):
    run = train(smoke_cfg("trainer.max_epochs=1", "callbacks=none"), tmp_path)
    with pytest.raises(
        UserError, match="epoch=selected needs .*selection.json; run `python -m dcgan_xai.analyze"
    ):
        curate_run(run["run_dir"], CurationSettings(epoch="selected", progress=False))
    with pytest.raises(UserError, match=r"epoch=7 has no checkpoint in .*; available: \[1\]"):
        curate_run(run["run_dir"], CurationSettings(epoch=7, progress=False))


def test_compare_puts_baseline_and_curated_side_by_side(curated, smoke_cfg, smoke_run, tmp_path):
    from dcgan_xai.analysis.aggregate import compare_runs
    from dcgan_xai.analysis.report import load_or_analyze
    from dcgan_xai.config import AnalysisSettings

    _, half, _ = curated
    cfg = smoke_cfg(f"data.exclude={half['dir']}/manifest.csv", "data.limit=null", "callbacks=none")
    runs = [smoke_run["run_dir"], train(cfg, tmp_path / "curated")["run_dir"]]
    settings = AnalysisSettings(quality=False, k=2)
    out = tmp_path / "cmp"
    result = compare_runs(runs, settings, out)
    assert result["dir"] == str(out)  # its own directory, not inside a run
    assert not (tmp_path / "curated" / "analysis" / "compare").exists()
    selected = [load_or_analyze(r, settings)["selected_epoch"] for r in runs]
    assert [(r["excluded"], r["selected_epoch"]) for r in result["rows"]] == [
        (0, selected[0]), (half["flagged"], selected[1]),
    ]  # fmt: skip
    body = (out / "compare.md").read_text().splitlines()[4:6]  # the two runs' rows
    assert [line.split(" | ")[:3] for line in body] == [
        [f"| {runs[0]}", "0", str(selected[0])], [f"| {runs[1]}", str(half["flagged"]), str(selected[1])],
    ]  # fmt: skip
    assert (out / "compare.png").is_file()
    assert "last epochs differ" not in (out / "compare.md").read_text()
    short = train(smoke_cfg("trainer.max_epochs=1", "callbacks=none"), tmp_path / "short")
    compare_runs([runs[0], short["run_dir"]], settings, tmp_path / "cmp_short")
    last = RunDir(runs[0]).checkpoint_epochs()[-1]
    assert (f"The runs' last epochs differ ({last}, 1): their last epochs are generators trained "
            "for different lengths.") in (tmp_path / "cmp_short" / "compare.md").read_text()  # fmt: skip
    with pytest.raises(UserError, match="already holds a comparison; choose another out_dir"):
        compare_runs(runs, settings, out)
    (out / "compare.json").unlink()  # a comparison killed before its record: written again
    (out / "compare.md").write_text("half-written")
    compare_runs(runs, settings, out)
    assert (out / "compare.md").read_text().splitlines()[4:6] == body
    assert [line.split(" | ")[-2:] for line in body] == [
        ["n/a", "(the first run) |"],
        ["n/a", "n/a |"],
    ]
    (out / "compare.json").unlink()
    from dcgan_xai.runs.ownership import held_lock

    with (
        held_lock(out / ".lock", "held"),
        pytest.raises(  # another comparison is writing there
            UserError,
            match=r"out_dir=.* is in use by another comparison \(pid [0-9]+ on .*\); wait",
        ),
    ):
        compare_runs(runs, settings, out)
    assert not (out / "compare.json").exists()
    with pytest.raises(UserError, match="no_run does not exist; give a training's run dir"):
        compare_runs([runs[0], tmp_path / "no_run"], settings, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # a failed comparison leaves no folder of its own


def test_flag_share_is_exact_with_seeded_ties_or_refused():
    from dcgan_xai.analysis.curation import flag_top_share

    cov = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.5, 0.2, 0.8, 0.0, 0.0, 0.0])
    flags, cut = flag_top_share(cov, 0.3)
    assert int(flags.sum()) == 3 and flags[1] and flags[6] and cut == 0.5
    assert int(flags[2:5].sum()) == 1  # one of the three tied at 0.5, by the seeded draw
    assert torch.equal(flag_top_share(cov, 0.3)[0], flags)
    picks = {tuple(flag_top_share(cov, 0.3, seed=s)[0].tolist()) for s in range(20)}
    assert len(picks) > 1  # the tie is broken by the seed, not by position
    with pytest.raises(UserError, match=r"flag_share=0.01 flags 0 of 10 images; allowed"):
        flag_top_share(cov, 0.01)
    with pytest.raises(UserError, match=r"flag_share=1.0 flags 10 of 10 images"):
        flag_top_share(cov, 1.0)


def test_control_arm_matches_the_count_per_digit():
    from dcgan_xai.analysis.curation import matched_control

    labels = torch.arange(100) % 10
    flagged = torch.zeros(100, dtype=torch.bool)
    flagged[[0, 10, 20, 1, 3, 13]] = True  # digit 0: 3, digit 1: 1, digit 3: 2
    control = matched_control(labels, flagged, seed=0)
    assert torch.equal(torch.bincount(labels[control], minlength=10),
                       torch.bincount(labels[flagged], minlength=10))  # fmt: skip
    assert not torch.equal(control, flagged)
    assert torch.equal(matched_control(labels, flagged, seed=0), control)


def test_excluding_images_keeps_the_order_of_the_kept_ones(mnist_fixture):
    from dcgan_xai.data.mnist import IndexBatchSampler, MNISTDataModule

    root, sums = mnist_fixture

    def visit(exclude):
        dm = MNISTDataModule(root, seed=3, limit=200, exclude=exclude, sources=["local"],
                             checksums=sums)  # fmt: skip
        dm.setup()
        sampler = IndexBatchSampler(len(dm.train_set), 32, 3, keys=dm.train_set.indices,
                                    key_space=len(dm.whole_train))  # fmt: skip
        sampler.set_epoch(2)
        return dm.train_set.indices[torch.cat(list(sampler))].tolist()

    full = visit(None)
    dropped = set(full[::7])
    kept = visit(torch.tensor(sorted(dropped)))
    assert kept == [i for i in full if i not in dropped]


def test_curation_scores_the_trained_subset_and_writes_a_control(smoke_run):
    s = curate_run(smoke_run["run_dir"], CurationSettings(epoch=2, layer="block3", method="hirescam",
                   flag_share=0.25, name="share-hires", progress=False, control=True))  # fmt: skip
    rows = read_csv(Path(s["dir"]) / "manifest.csv")
    assert len(rows) == s["total"] == 300 and s["scored"] == 256  # smoke: data.limit=256
    scored = [r for r in rows if r["coverage"] != "nan"]
    assert len(scored) == 256 and s["flagged"] == 64
    assert not any(r["flagged"] == "True" for r in rows if r["coverage"] == "nan")
    assert s["settings"]["method"] == "hirescam"
    control = read_csv(Path(s["control_dir"]) / "manifest.csv")
    per_digit = json.loads((Path(s["control_dir"]) / "summary.json").read_text())[
        "flagged_per_digit"
    ]
    assert per_digit == s["flagged_per_digit"]
    assert sum(r["flagged"] == "True" for r in control) == 64


def test_curate_batch_size_and_oversize_manifests_are_refused(smoke_run, curated, tmp_path):
    with pytest.raises(UserError, match="batch_size=0 is not allowed; it must be >= 1"):
        curate_run(smoke_run["run_dir"], CurationSettings(epoch=2, batch_size=0, progress=False))
    first, _, _ = curated
    manifest = _edit(first["dir"], tmp_path, "huge")
    with open(manifest, "r+b") as f:
        f.truncate(25_000_000)  # sparse: no time spent writing it
    with pytest.raises(
        UserError, match=r"is 25 MB; a manifest of MNIST's train split is about 3 MB"
    ):
        read_manifest(manifest)


def test_the_flagged_examples_show_the_maps_that_were_scored(smoke_run):
    from dcgan_xai.analysis.curation import score_split
    from dcgan_xai.runs.load import datamodule_for_run, load_module
    from dcgan_xai.xai.gradcam import grad_cam

    run = RunDir(smoke_run["run_dir"])
    split = datamodule_for_run(run, trained=True).train_set
    d = load_module(run.checkpoint(2)).discriminator
    scores = score_split(d, split, "block1", batch_size=40, progress=False, keep_top=5)
    top = scores["coverage"].argsort(descending=True, stable=True)[:5]
    assert torch.equal(scores["top_positions"], top) and scores["top_maps"].amax() > 0
    for slot, position in enumerate(top.tolist()):  # each map as computed in its own batch
        start = position // 40 * 40
        batch = to_unit_range(split.images[start : start + 40])
        maps = grad_cam(d, batch, "block1", bn_mode="batch")
        assert torch.equal(scores["top_maps"][slot], maps[position - start])
    alone = grad_cam(d, to_unit_range(split.images[top]), "block1", bn_mode="batch")
    assert not torch.equal(alone, scores["top_maps"])  # a batch of its own gives other maps


def test_a_curation_lands_whole_or_not_at_all_and_is_never_written_over(
    smoke_run, tmp_path, monkeypatch
):
    """Issue 29, severe case 6: a kill between a curation's files leaves no folder (no manifest
    beside another curation's summary), and a second curation under a name is refused."""
    run = RunDir(tmp_path / "r")
    shutil.copytree(smoke_run["run_dir"], run.root)
    kept = curate_run(run.root, CurationSettings(epoch=2, name="c", progress=False, control=True))
    before = {p.name: p.read_bytes() for p in Path(kept["dir"]).iterdir()}
    with pytest.raises(UserError, match=r"curation .*/curation/c already exists; choose another"):
        curate_run(
            run.root, CurationSettings(epoch=1, name="c", flag_threshold=0.1, progress=False)
        )
    assert {p.name: p.read_bytes() for p in Path(kept["dir"]).iterdir()} == before

    def killed(*args, **kwargs):  # dies after manifest.csv and summary.json, before the figures
        raise KeyboardInterrupt

    listed = sorted(p.name for p in (run.root / "curation").iterdir())
    monkeypatch.setattr("dcgan_xai.analysis.figures.save_png", killed)
    with pytest.raises(KeyboardInterrupt):
        curate_run(run.root, CurationSettings(epoch=1, name="d", progress=False, control=True))
    assert sorted(p.name for p in (run.root / "curation").iterdir()) == listed  # no d, no temp


def test_a_control_left_by_a_kill_between_the_two_renames_is_replaced(smoke_run, tmp_path):
    """The control lands first, the curation last: a kill between them leaves the control alone,
    which the next curation of that name replaces; any other folder of that name is kept."""
    run = RunDir(tmp_path / "r")
    shutil.copytree(smoke_run["run_dir"], run.root)
    first = curate_run(run.root, CurationSettings(epoch=2, name="c", progress=False, control=True))
    shutil.rmtree(first["dir"])  # as a kill between the two renames leaves it
    again = curate_run(run.root, CurationSettings(epoch=2, name="c", progress=False, control=True))
    assert Path(again["dir"], "manifest.csv").is_file()
    assert Path(again["control_dir"], "summary.json").is_file()
    theirs = run.curation("e-control")
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match=r"curation .*/curation/e-control already exists"):
        curate_run(run.root, CurationSettings(epoch=2, name="e", progress=False, control=True))
    assert (theirs / "notes.txt").read_text() == "the user's"


def test_compare_judges_each_run_against_the_first_by_the_tie_rule():
    import math

    from dcgan_xai.analysis.aggregate import _against_the_first

    cells = _against_the_first([[100.0, 101.0], [80.0, 81.0], [100.4, 100.9], []])
    assert cells[0] == {"last_fresh": "100.5 ± 0.7 (2)", "vs_first": "(the first run)"}
    gain = math.log(100.5 / 80.5)  # 22% lower FID, far beyond the sets' noise
    assert cells[1]["vs_first"].startswith(f"{gain:.3f} ± ") and cells[1]["vs_first"].endswith(
        "(win)"
    )
    assert cells[2]["vs_first"].endswith("(tie)")  # within 2 standard errors
    assert cells[3] == {"last_fresh": "n/a", "vs_first": "n/a"}  # no fresh sets: no claim
