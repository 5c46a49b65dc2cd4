"""Where things live. The one place that resolves paths; environment variables override."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def shared_data_dir() -> Path:
    """The full curated training set (`../shared/data/cxr` beside the repo)."""
    return _env_path("CXR_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "cxr")


def sample_data_dir() -> Path:
    """The small redistributable sample shipped in the repo."""
    return _env_path("CXR_SAMPLE_DIR", REPO_ROOT / "dataset")


def iu_reports_dir() -> Path:
    return _env_path("CXR_IU_REPORTS_DIR", REPO_ROOT.parent / "shared" / "data" / "iu_reports")


def weights_dir() -> Path:
    return _env_path("CXR_WEIGHTS_DIR", REPO_ROOT / "weights")


def outputs_dir() -> Path:
    return _env_path("CXR_OUTPUTS_DIR", REPO_ROOT / "outputs")


def configs_dir() -> Path:
    return REPO_ROOT / "configs"


def default_data_dir() -> Path:
    """The full set when it is present, otherwise the shipped sample."""
    full = shared_data_dir()
    return full if (full / "metadata.csv").is_file() else sample_data_dir()


def cache_dir() -> Path:
    """Rebuildable derived files (e.g. the SQLite manifest index); safe to delete."""
    return _env_path("CXR_CACHE_DIR", outputs_dir() / "cache")
