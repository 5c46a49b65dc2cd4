"""bf16 runs only where the CPU has it natively: trainers and the pipeline fall back to fp32 elsewhere."""
import torch

from xray_generator import precision
from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def _forget_probe(monkeypatch, override: str | None = None):
    precision.cpu_has_native_bf16.cache_clear()
    if override is None:
        monkeypatch.delenv(precision.OVERRIDE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(precision.OVERRIDE_VARIABLE, override)


def test_the_cpuinfo_flags_decide_native_bf16(tmp_path, monkeypatch):
    avx2, amx = tmp_path / "avx2", tmp_path / "amx"
    avx2.write_text(AVX2_ONLY)
    amx.write_text(SAPPHIRE_RAPIDS)
    assert "avx2" in precision.cpu_flags(avx2) and "amx_bf16" in precision.cpu_flags(amx)
    assert precision.cpu_flags(tmp_path / "missing") == set()
    for text, expected in ((AVX2_ONLY, False), (SAPPHIRE_RAPIDS, True)):
        _forget_probe(monkeypatch)
        monkeypatch.setattr(precision, "cpu_flags", lambda text=text: set(text.split("flags\t\t: ")[1].split()))
        assert precision.cpu_has_native_bf16() is expected
    precision.cpu_has_native_bf16.cache_clear()


def test_the_environment_variable_forces_the_choice(monkeypatch):
    for value, expected in (("1", True), ("0", False)):
        _forget_probe(monkeypatch, value)
        assert precision.cpu_has_native_bf16() is expected
    _forget_probe(monkeypatch)


def test_bf16_requests_fall_back_to_fp32_without_native_support(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.training_mixed_precision("bf16") == "no"
    assert precision.training_mixed_precision("no") == "no"
    assert precision.training_mixed_precision(None) == "no"
    assert precision.cpu_precision("bf16") == "fp32"
    with precision.cpu_bf16_autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.training_mixed_precision("bf16") == "bf16"
    assert precision.cpu_precision("bf16") == "bf16"
    assert precision.cpu_precision("fp32") == "fp32"
    with precision.cpu_bf16_autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_the_pipeline_runs_fp32_on_a_cpu_without_bf16_unless_asked(monkeypatch, tiny_pipeline_dir):
    import xray_generator.pipelines.latent_diffusion as ldm

    monkeypatch.setattr(ldm, "cpu_precision", lambda requested: "fp32")
    pipe = XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    assert pipe.precision == "fp32" and pipe.unet.dtype == torch.float32
    image = pipe("normal chest", seed=0, num_inference_steps=2).images[0]
    assert image.dtype.name == "float32"
    # An explicit bf16 request is honoured (reproducing a bf16 run), native or not.
    forced = XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.bfloat16)
    assert forced.precision == "bf16" and forced.unet.dtype == torch.bfloat16


def test_the_app_says_why_an_image_ran_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.precision_label("fp32") == "fp32 (this CPU has no native bf16)"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.precision_label("fp32") == "fp32"
    assert precision.precision_label("bf16") == "bf16"
    assert precision.precision_label(None) == "precision not recorded"
