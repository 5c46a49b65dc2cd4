"""Shipped-weights integrity: every weights folder has a MANIFEST.json with the sha256 of each file.

Loading verifies the hashes first, so a truncated, swapped or tampered file is refused with a clear
message instead of producing garbage. Only safetensors are ever loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from xray_generator.io import atomic_write_text

MANIFEST_NAME = "MANIFEST.json"
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class WeightsError(RuntimeError):
    """Weights that are missing, corrupt or do not match their manifest."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> dict:
    """Hash every file below `folder` (except the manifest itself) and write MANIFEST.json atomically."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    manifest = {"files": files}
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_manifest(folder: str | Path) -> str:
    """Check every listed file's size and sha256; return the weights hash (sha256 of the manifest).

    Raises WeightsError naming the first problem: no folder, no manifest, a missing, truncated or
    altered file, a weights file the manifest does not list, or a pickle-format file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder}")
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise WeightsError(f"{folder} has no {MANIFEST_NAME}; refusing to load unverified weights")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightsError(f"{manifest_path} is not a valid weights manifest: {exc}") from exc
    for rel, info in files.items():
        path = folder / rel
        if not path.is_file():
            raise WeightsError(f"weights file missing: {path}")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise WeightsError(f"weights file {path} has {size} bytes, the manifest says {info['bytes']} (truncated or replaced)")
        if sha256_file(path) != info["sha256"]:
            raise WeightsError(f"weights file {path} does not match its sha256 in {MANIFEST_NAME} (corrupt or altered)")
    for path in folder.rglob("*"):
        rel = str(path.relative_to(folder))
        if path.suffix in FORBIDDEN_SUFFIXES:
            raise WeightsError(f"{path} is a pickle-format file; only safetensors are loaded")
        if path.suffix == ".safetensors" and rel not in files:
            raise WeightsError(f"{path} is not listed in {MANIFEST_NAME}")
    return weights_hash(folder)


def weights_hash(folder: str | Path) -> str:
    """A short identity for a weights folder: the sha256 of its manifest, first 16 hex digits."""
    return sha256_file(Path(folder) / MANIFEST_NAME)[:16]


def replace_folder_atomically(staging: Path, target: Path) -> None:
    """Swap a fully written staging folder into place; the old folder survives until the swap."""
    backup = target.with_name(f".{target.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        os.replace(target, backup)
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


def fresh_staging_folder(target: Path) -> Path:
    """An empty hidden folder beside `target` to write a new version into before `replace_folder_atomically`."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging
