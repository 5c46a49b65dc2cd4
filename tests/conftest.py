"""Shared fixtures: tiny untrained models built from the tiny configs, so tests run in seconds."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Passive OpenMP workers: when another job (a training run) holds a core, spinning workers make
# every torch call many times slower instead of just sharing the CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The suite inspects the PyTorch modules (forward hooks, patched layers) of tiny random models, so it
# runs the torch backend unless a test names another; tests/test_runtime.py covers the runtimes.
os.environ.setdefault("CXR_BACKEND", "torch")
import torch  # noqa: E402  (after the OpenMP setting, which is read at import)

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(int(os.environ.get("CXR_TEST_THREADS", "2")))


def flip_one_byte(path: str | Path, offset: int | None = -1) -> None:
    """Invert one byte of a file in place, keeping its size: weights altered after their manifest was written.
    `offset` None flips the middle byte."""
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "precision: the outcome depends on the bf16/fp32 path (tiny models only); .ci/run runs these under CXR_BF16=1 and CXR_BF16=0",
    )
    config.addinivalue_line(
        "markers",
        "needs(path, remedy): the test needs `path` to exist; outside CI it is skipped with `remedy` as the reason, in CI it fails",
    )


def pytest_report_header(config) -> list[str]:
    return precision_header()


def pytest_sessionstart(session):
    # -q (the README's command) hides the report header; these lines must still reach the log.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        for line in precision_header():
            reporter.write_line(line)


def precision_header() -> list[str]:
    """Which precision path this run exercises, so every test log says so."""
    from xray_generator.precision import NATIVE_BF16_FLAGS, OVERRIDE_VARIABLE, cpu_flags, cpu_precision

    flags = cpu_flags()
    present = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    override = os.environ.get(OVERRIDE_VARIABLE, "").strip()
    why = f"forced by {OVERRIDE_VARIABLE}={override}" if override in ("0", "1") else f"from the CPU flags ({OVERRIDE_VARIABLE} unset)"
    return [
        f"cpu bf16 flags: {', '.join(present) if present else 'none'} (of {', '.join(NATIVE_BF16_FLAGS)})",
        f"pipeline precision: {cpu_precision('bf16')}, {why}",
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) (CXR_TEST_THREADS), CI={'set' if in_ci() else 'unset'}",
    ]


def bf16_is_emulated() -> bool:
    """The pipeline runs bf16 (CXR_BF16=1) on a CPU without AMX / AVX-512 BF16: correct, but emulated and many times slower."""
    from xray_generator.precision import NATIVE_BF16_FLAGS, cpu_flags, cpu_precision

    return cpu_precision("bf16") == "bf16" and not any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_resource(what: str, remedy: str) -> None:
    """Skip a test whose resource is absent, with the reason; in CI (env CI set) fail instead: a skip there hides a gap."""
    if in_ci():
        pytest.fail(f"{what}. {remedy}. (CI is set: a missing resource fails the run instead of skipping.)", pytrace=False)
    pytest.skip(f"{what}. {remedy}")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        path, remedy = mark.args
        if not Path(path).exists():
            missing_resource(f"{path} not found", remedy)


def build_tiny_pipeline(seed: int = 0):
    from diffusers import DDPMScheduler

    from xray_generator.models.autoencoder import build_autoencoder
    from xray_generator.models.text_encoder import FrozenTextEncoder, TextProjection
    from xray_generator.models.unet import build_unet
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    torch.manual_seed(seed)
    vae_cfg = json.loads((REPO / "configs" / "vae_tiny.json").read_text())["model"]
    ldm_cfg = json.loads((REPO / "configs" / "ldm_tiny.json").read_text())
    encoder = FrozenTextEncoder(ldm_cfg["text_encoder"], max_length=ldm_cfg["text_max_length"])
    pipe = XRayDiffusionPipeline(
        vae=build_autoencoder(vae_cfg).eval(),
        unet=build_unet(ldm_cfg["unet"]).eval(),
        text_projection=TextProjection(encoder.name, encoder.hidden_size, ldm_cfg["unet"]["cross_attention_dim"]).eval(),
        scheduler=DDPMScheduler(**ldm_cfg["scheduler"]),
        text_encoder=encoder,
    )
    pipe.generation_defaults.update(ldm_cfg["generation_defaults"])
    pipe.model_name = "ldm-tiny"
    return pipe


@pytest.fixture(scope="session")
def tiny_weights_root(tmp_path_factory) -> Path:
    """A weights root holding an untrained tiny `ldm/` pipeline folder (with MANIFEST.json)."""
    root = tmp_path_factory.mktemp("weights")
    build_tiny_pipeline().save_pretrained(root / "ldm")
    return root


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_weights_root) -> Path:
    return tiny_weights_root / "ldm"


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A verified folder holding an untrained tiny finding classifier (configs/classifier_tiny.json)."""
    from safetensors.torch import save_file

    from xray_generator.models.classifier import build_classifier
    from xray_generator.weights import write_manifest

    folder = tmp_path_factory.mktemp("classifier_root") / "classifier"
    folder.mkdir()
    config = json.loads((REPO / "configs" / "classifier_tiny.json").read_text())
    torch.manual_seed(0)
    save_file(build_classifier(config).state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    write_manifest(folder)
    return folder


TINY_FAMILY_CONFIGS = {  # family -> (tiny config file, model overrides)
    "dcgan": ("gan_tiny.json", {}),
    "dcgan_conditional": ("gan_tiny.json", {"classes": ["Normal", "Pneumonia", "COVID-19"]}),
    "lsgan": ("gan_tiny.json", {}),
    "vae": ("vae_family_tiny.json", {"prior": "standard", "components": 1}),
    "gmvae": ("vae_family_tiny.json", {}),
    "gmvae_supervised": ("vae_family_tiny.json", {"prior": "class_mixture", "classes": ["Normal", "Pneumonia", "COVID-19"]}),
    "cvae": ("cvae_tiny.json", {}),
}


def write_tiny_family(folder: Path, family: str, seed: int = 0) -> Path:
    """An exported-looking weights folder of an untrained tiny model (no training: it takes milliseconds).

    Holds what an export holds for the loaders and the app: config.json, model.safetensors, a model
    card and MANIFEST.json.
    """
    from safetensors.torch import save_file

    from xray_generator.models.cvae import build_cvae
    from xray_generator.models.gan import build_gan_generator
    from xray_generator.models.vae_family import build_vae_family
    from xray_generator.weights import write_manifest

    name, overrides = TINY_FAMILY_CONFIGS[family]
    config = json.loads((REPO / "configs" / name).read_text())
    config["family"] = family
    config["model"].update(overrides)
    torch.manual_seed(seed)
    build = build_cvae if family == "cvae" else build_gan_generator if "gan" in family else build_vae_family
    model = build(config["model"]).eval()
    folder.mkdir(parents=True)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "README.md").write_text(f"# {family} (tiny, untrained; tests only)\n\nSynthetic images for research use only. Not for clinical use.\n")
    write_manifest(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_families_root(tmp_path_factory, tiny_weights_root) -> Path:
    """A weights root with the tiny ldm plus tiny untrained dcgan_conditional and cvae folders (the other families missing)."""
    import shutil

    root = tmp_path_factory.mktemp("family_weights")
    shutil.copytree(tiny_weights_root / "ldm", root / "ldm")
    for family in ("dcgan_conditional", "cvae"):
        write_tiny_family(root / family, family)
    return root



# ------------------------------------------------------------------ PostgreSQL (the shared index of a lab)
POSTGRES_URL_ENV = "CXR_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The URL of the test PostgreSQL server `.ci/run` starts (scripts/test_postgres.sh).

    In CI (env CI set) a missing or unreachable server fails the test: the index must be proven
    against a real server there. Elsewhere the PostgreSQL variants are skipped, saying how to run them.
    """
    import sqlalchemy as sa

    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    how = f"start one with `export {POSTGRES_URL_ENV}=$(bash scripts/test_postgres.sh start /tmp/cxr-postgres)`"
    problem = None if url else f"{POSTGRES_URL_ENV} is not set; {how}"
    if url:
        try:
            engine = sa.create_engine(url)
            with engine.connect() as connection:
                connection.execute(sa.text("select 1"))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001  (any failure to reach it is the same answer)
            problem = f"cannot reach the test PostgreSQL server at {POSTGRES_URL_ENV}={url}: {str(exc).splitlines()[0]}; {how}"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the index tests against PostgreSQL: {problem}", pytrace=False)
        pytest.skip(problem)
    return url


@pytest.fixture()
def fresh_postgres_url(postgres_server_url):
    """A new, empty database on the test server (dropped afterwards), so tests never see each other's tables."""
    yield from _fresh_postgres_database(postgres_server_url)


def _fresh_postgres_database(server_url: str):
    import uuid

    import sqlalchemy as sa

    name = f"cxr_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
