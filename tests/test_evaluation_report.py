"""The metrics JSON: built from metric results, written atomically, validated field by field."""
import copy
import json
from datetime import datetime

import numpy as np
import pytest

from xray_generator.evaluation.distribution import fid_with_bootstrap, real_vs_real_floor, fid_from_features
from xray_generator.evaluation.report import (
    build_metric,
    git_commit,
    read_metrics_json,
    validate_metrics_json,
    write_metrics_json,
)

SHA = "ab" * 32


def example_metrics():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 4)), rng.normal(size=(40, 4)) + 0.2
    fid = fid_with_bootstrap(real, fake, n_boot=20, seed=0)
    floor = real_vs_real_floor(real, fid_from_features, seed=0)
    return [
        build_metric("fid", fid["value"], n={"real": fid["n_a"], "generated": fid["n_b"]}, ci=fid, floor=floor,
                     extra={"n_boot": fid["n_boot"], "bias_corrected": fid["value_bias_corrected"]}),
        build_metric("memorisation_rate", np.float32(0.0), n=np.int64(40)),
    ]


def test_metric_results_round_trip_through_the_file(tmp_path):
    path = tmp_path / "metrics" / "toy.json"
    written = write_metrics_json(path, "toy", {"features": "test", "seeds": (0, 1)}, SHA, example_metrics())
    assert read_metrics_json(path) == written
    assert [p.name for p in path.parent.iterdir()] == ["toy.json"]  # no temporary file left behind

    fid = written["metrics"][0]
    assert fid["n"] == {"real": 60, "generated": 40}
    assert fid["ci"]["method"] == "basic bootstrap" and fid["ci"]["level"] == 0.95
    assert fid["floor"]["n"] == {"a": 30, "b": 30}
    assert "seed 0" in fid["floor"]["method"]
    assert written["metrics"][1]["ci"] is None and written["metrics"][1]["floor"] is None
    assert datetime.fromisoformat(written["date"]).utcoffset().total_seconds() == 0
    assert written["git_commit"] is None or len(written["git_commit"]) == 40
    assert written["settings"]["seeds"] == [0, 1]


def valid_document():
    return {
        "schema_version": 1, "model": "toy", "date": "2025-01-31T12:00:00+00:00", "git_commit": None,
        "weights_sha256": SHA, "settings": {}, "metrics": copy.deepcopy(example_metrics()),
    }


def broken(edit):
    document = valid_document()
    edit(document)
    return document


@pytest.mark.parametrize(
    "document, field",
    [
        (broken(lambda d: d["metrics"][0].pop("floor")), r"\$\.metrics\[0\]\.floor"),
        (broken(lambda d: d["metrics"][0].update(value=float("nan"))), r"\$\.metrics\[0\]\.value"),
        (broken(lambda d: d["metrics"][0].update(n=0)), r"\$\.metrics\[0\]\.n"),
        (broken(lambda d: d["metrics"][0]["ci"].update(level=95)), r"\$\.metrics\[0\]\.ci"),
        (broken(lambda d: d["metrics"][0]["ci"].update(low=1e9)), r"\$\.metrics\[0\]\.ci"),
        (broken(lambda d: d.update(weights_sha256="not-a-hash")), r"\$\.weights_sha256"),
        (broken(lambda d: d.update(date="2025-01-31T12:00:00")), r"\$\.date"),
        (broken(lambda d: d.pop("git_commit")), r"\$\.git_commit"),
        (broken(lambda d: d["metrics"][1].update(name="fid")), r"\$\.metrics\[1\]\.name"),
        (broken(lambda d: d.update(metrics=[])), r"\$\.metrics"),
    ],
)
def test_a_broken_document_is_rejected_naming_the_field(document, field):
    validate_metrics_json(valid_document())  # the unbroken one passes
    with pytest.raises(ValueError, match=field):
        validate_metrics_json(document)


def test_an_invalid_document_is_not_written(tmp_path):
    path = tmp_path / "toy.json"
    with pytest.raises(ValueError, match="weights_sha256"):
        write_metrics_json(path, "toy", {}, "ABC", example_metrics())
    assert not path.exists()


def test_a_file_edited_by_hand_is_rejected_on_read(tmp_path):
    path = tmp_path / "toy.json"
    document = write_metrics_json(path, "toy", {}, SHA, example_metrics())
    del document["metrics"][0]["n"]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"\$\.metrics\[0\]\.n: required"):
        read_metrics_json(path)


def test_git_commit_is_read_from_the_git_folder_without_running_git(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert git_commit(tmp_path) is None  # no commit yet
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/main\n")
    assert git_commit(tmp_path) == commit
    (git / "refs" / "heads" / "main").write_text(commit.replace("0", "f") + "\n")
    assert git_commit(tmp_path) == commit.replace("0", "f")
    (git / "HEAD").write_text(commit + "\n")  # detached
    assert git_commit(tmp_path) == commit
    assert git_commit(tmp_path / "elsewhere") is None
