"""The command line: a PNG with provenance, byte-identical reruns, batches with a manifest, clear errors."""
from __future__ import annotations

import csv

import pytest

from xray_generator.__main__ import main
from xray_generator.io import read_png_metadata


@pytest.mark.precision
def test_generate_writes_png_with_metadata_and_is_byte_identical(tiny_pipeline_dir, tmp_path, capsys):
    args = ["generate", "--prompt", "right lower lobe pneumonia", "--seed", "0", "--weights", str(tiny_pipeline_dir)]
    assert main(args + ["-o", str(tmp_path / "a.png")]) == 0
    assert main(args + ["-o", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    meta = read_png_metadata(tmp_path / "a.png")
    assert meta["prompt"] == "right lower lobe pneumonia" and meta["seed"] == 0 and meta["synthetic"] is True
    assert {"model", "weights_sha256", "sampler", "steps", "guidance", "guidance_fraction"} <= set(meta)
    from PIL import Image

    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "L" and im.size == (256, 256)


def test_guidance_fraction_flag_is_recorded_and_changes_the_image(tiny_pipeline_dir, tmp_path):
    args = ["generate", "--prompt", "right lower lobe pneumonia", "--seed", "0", "--guidance", "5", "--weights", str(tiny_pipeline_dir)]
    assert main(args + ["-o", str(tmp_path / "full.png")]) == 0
    assert main(args + ["--guidance-fraction", "0.5", "-o", str(tmp_path / "half.png")]) == 0
    assert read_png_metadata(tmp_path / "half.png")["guidance_fraction"] == 0.5
    assert (tmp_path / "full.png").read_bytes() != (tmp_path / "half.png").read_bytes()


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
        ["--prompt", "x", "--guidance-fraction", "0"],
        ["--prompt", "x", "--seed", "-1"],
    ]
    for extra in cases:
        assert main(["generate", "--weights", str(tiny_pipeline_dir), "-o", str(tmp_path / "x.png")] + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
    assert main(["generate", "--prompt", "x", "--weights", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.png")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------- the alternative families
def _write_png(path, size):
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    Image.fromarray(((np.sin(xx / 7.0) * np.cos(yy / 5.0) + 1) * 100).astype("uint8"), mode="L").save(path)
    return path


def test_family_generate_writes_pngs_with_provenance_and_a_batch_equals_single_calls(tiny_families_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_families_root))
    args = ["generate", "--model", "dcgan_conditional", "--condition", "Pneumonia"]
    assert main(args + ["--seed", "4", "-o", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--seed", "4", "-o", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    meta = read_png_metadata(tmp_path / "a.png")
    assert meta["model"] == "dcgan_conditional" and meta["condition"] == "Pneumonia" and meta["seed"] == 4 and meta["synthetic"] is True
    assert len(meta["weights_sha256"]) == 64 and meta["source_image_id"] == ""
    assert main(args + ["--seed", "3", "--n", "3", "-o", str(tmp_path / "batch")]) == 0
    with open(tmp_path / "batch" / "xray_manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["seed"] for r in rows] == ["3", "4", "5"] and {r["condition"] for r in rows} == {"Pneumonia"}
    assert (tmp_path / "batch" / "xray_0001.png").read_bytes() == (tmp_path / "a.png").read_bytes()  # image i = seed + i
    capsys.readouterr()
    assert main(args + ["--seed", "3", "--n", "3", "-o", str(tmp_path / "batch")]) == 0
    assert "xray_0000.png" not in capsys.readouterr().out  # a rerun skips finished images


def test_cvae_translates_a_source_file_and_records_it(tiny_families_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_families_root))
    source = _write_png(tmp_path / "normal.png", (90, 70))
    assert main(["generate", "--model", "cvae", "--source", str(source), "--seed", "2", "-o", str(tmp_path / "out.png")]) == 0
    assert "reduced and centre-cropped to 32 x 32" in capsys.readouterr().err
    meta = read_png_metadata(tmp_path / "out.png")
    assert meta["model"] == "cvae" and meta["condition"] == "Pneumonia" and meta["source_image_id"] == "normal.png"
    assert len(meta["source_file_sha256"]) == 64 and "translated real radiograph" in meta["kind"] and meta["synthetic"] is True


def test_family_bad_input_prints_one_line_and_exits_2(tiny_families_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_families_root))
    film = _write_png(tmp_path / "film.png", (64, 64))
    (tmp_path / "notes.txt").write_text("not an image")
    cases = [
        (["--model", "nope"], "unknown model family 'nope'"),
        (["--model", "dcgan_conditional", "--condition", "Tuberculosis"], "choose one of: Normal, Pneumonia, COVID-19"),
        (["--model", "dcgan_conditional", "--prompt", "pneumonia"], "takes no --prompt"),
        (["--model", "dcgan_conditional", "--steps", "4"], "takes no --steps"),
        (["--model", "dcgan_conditional", "--source", str(film)], "takes no --source"),
        (["--model", "cvae"], "pass --source"),
        (["--model", "cvae", "--source", str(tmp_path / "notes.txt")], "not an image file"),
        (["--model", "cvae", "--source", str(_write_png(tmp_path / "tiny.png", (20, 20)))], "at least 32"),
        (["--model", "cvae", "--source", str(tmp_path / "missing.png")], "cannot read the source"),
        (["--model", "cvae", "--source", str(film), "--condition", "COVID-19"], "choose one of: Normal, Pneumonia"),
        (["--model", "gmvae"], "no weights for model family 'gmvae'"),
        (["--model", "ldm", "--prompt", "x", "--condition", "Normal"], "--condition applies to the alternative families"),
        (["--model", "ldm"], "needs a --prompt"),
    ]
    for extra, message in cases:
        assert main(["generate", "-o", str(tmp_path / "x.png")] + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "x.png").exists()


def test_evaluate_refuses_bad_family_arguments_before_loading(capsys):
    assert main(["evaluate", "--model", "nope", "--n", "10"]) == 2
    assert "unknown model family 'nope'" in capsys.readouterr().err
    assert main(["evaluate", "--model", "cvae", "--steps", "4", "--n", "10"]) == 2
    assert "no sampler" in capsys.readouterr().err


def test_verify_weights_checks_every_family_folder_and_lists_untrained_ones(tiny_families_root, monkeypatch, capsys):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_families_root))
    assert main(["verify-weights"]) == 0
    out = capsys.readouterr().out
    assert "ldm: ok" in out and "cvae: ok" in out and "dcgan_conditional: ok" in out
    assert "dcgan: not trained yet" in out and "gmvae_supervised: not trained yet" in out


def test_help_quotes_the_defaults_of_the_weights_it_would_load(tiny_weights_root, tmp_path, monkeypatch, capsys):
    """Defaults are stated once, in pipeline.json: the help text reads them instead of restating a number."""
    import json

    from xray_generator.__main__ import build_parser, shipped_generation_defaults

    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_weights_root))
    tiny = json.loads((tiny_weights_root / "ldm" / "pipeline.json").read_text())["generation_defaults"]
    assert shipped_generation_defaults() == tiny
    for command in ("generate", "edit"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"default from the model: {tiny['num_inference_steps']} for the shipped weights" in text
        assert f"default from the model: {tiny['guidance_scale']} for the shipped weights" in text
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    assert "sampler steps (default from the model)" in " ".join(capsys.readouterr().out.split())
