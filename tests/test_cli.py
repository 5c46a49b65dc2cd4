"""The command line: a PNG with provenance, byte-identical reruns, batches with a manifest, clear errors."""
from __future__ import annotations

import csv

from xray_generator.__main__ import main
from xray_generator.io import read_png_metadata


def test_generate_writes_png_with_metadata_and_is_byte_identical(tiny_pipeline_dir, tmp_path, capsys):
    args = ["generate", "--prompt", "right lower lobe pneumonia", "--seed", "0", "--weights", str(tiny_pipeline_dir)]
    assert main(args + ["-o", str(tmp_path / "a.png")]) == 0
    assert main(args + ["-o", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    meta = read_png_metadata(tmp_path / "a.png")
    assert meta["prompt"] == "right lower lobe pneumonia" and meta["seed"] == 0 and meta["synthetic"] is True
    assert {"model", "weights_sha256", "sampler", "steps", "guidance"} <= set(meta)
    from PIL import Image

    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "L" and im.size == (256, 256)


def test_batch_writes_manifest_and_a_rerun_skips_finished_images(tiny_pipeline_dir, tmp_path, capsys):
    args = ["generate", "--prompt", "normal chest", "--n", "3", "--seed", "10", "--weights", str(tiny_pipeline_dir), "-o", str(tmp_path / "batch")]
    assert main(args) == 0
    with open(tmp_path / "batch" / "xray_manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["seed"] for r in rows] == ["10", "11", "12"] and all(r["synthetic"] == "True" for r in rows)
    capsys.readouterr()
    (tmp_path / "batch" / "xray_0002.png").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "xray_0002.png" in printed and "xray_0000.png" not in printed


def test_bad_input_prints_one_line_and_exits_2(tiny_pipeline_dir, tmp_path, capsys):
    cases = [
        ["--prompt", "   "],
        ["--prompt", "x", "--steps", "0"],
        ["--prompt", "x", "--guidance", "nan"],
        ["--prompt", "x", "--seed", "-1"],
    ]
    for extra in cases:
        assert main(["generate", "--weights", str(tiny_pipeline_dir), "-o", str(tmp_path / "x.png")] + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
    assert main(["generate", "--prompt", "x", "--weights", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.png")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
