"""The metrics file `outputs/metrics/<model>.json`: schema, writing and validation.

A number in this file has to say how it was made: how many images it used, its confidence
interval, what two sets of real images score against each other (its floor), the settings,
the weights it judged and the code that computed it. The schema makes the absence of a CI or
a floor explicit (``null``) rather than silent.

Example of a file::

    {
      "schema_version": 1,
      "model": "latent_diffusion",
      "date": "2025-01-31T12:00:00+00:00",
      "git_commit": "0123…",  # or null outside a git checkout
      "weights_sha256": "ab12…",  # or null for real-data baselines
      "settings": {"features": {...}, "n_generated": 5000, "seed": 0, "sampler": "ddim", ...},
      "metrics": [
        {"name": "fid", "value": 23.1, "n": {"real": 5000, "generated": 5000},
         "ci": {"low": 21.9, "high": 24.0, "level": 0.95, "method": "basic bootstrap"},
         "floor": {"value": 2.4, "n": {"a": 2500, "b": 2500}, "ci": null,
                   "method": "real vs real: disjoint random halves (seed 0)"},
         "extra": {"n_boot": 100}}
      ]
    }
"""
from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from xray_generator.io import atomic_write_text
from xray_generator.paths import REPO_ROOT

METRICS_SCHEMA_VERSION = 1

_NUMBER = {"type": "number"}
_COUNT = {"type": "integer", "minimum": 1}
# A single count, or one count per image set, e.g. {"real": 5000, "generated": 5000}.
_SAMPLE_SIZE = {
    "anyOf": [_COUNT, {"type": "object", "minProperties": 1, "additionalProperties": _COUNT}]
}
_CONFIDENCE_INTERVAL = {
    "type": "object",
    "required": ["low", "high", "level", "method"],
    "properties": {
        "low": _NUMBER,
        "high": _NUMBER,
        "level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "method": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}
_FLOOR = {
    "type": "object",
    "required": ["value", "n", "ci", "method"],
    "properties": {
        "value": _NUMBER,
        "n": _SAMPLE_SIZE,
        "ci": {"anyOf": [{"type": "null"}, _CONFIDENCE_INTERVAL]},
        "method": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}
_METRIC = {
    "type": "object",
    "required": ["name", "value", "n", "ci", "floor", "extra"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_.\-]*$"},
        "value": _NUMBER,
        "n": _SAMPLE_SIZE,
        "ci": {"anyOf": [{"type": "null"}, _CONFIDENCE_INTERVAL]},
        "floor": {"anyOf": [{"type": "null"}, _FLOOR]},
        "extra": {"type": "object"},
    },
    "additionalProperties": False,
}
METRICS_JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "CXR Studio metrics file (outputs/metrics/<model>.json)",
    "type": "object",
    "required": ["schema_version", "model", "date", "git_commit", "weights_sha256", "settings", "metrics"],
    "properties": {
        "schema_version": {"const": METRICS_SCHEMA_VERSION},
        "model": {"type": "string", "minLength": 1},
        "date": {"type": "string", "description": "ISO 8601 with a UTC offset of zero"},
        "git_commit": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^[0-9a-f]{40}([0-9a-f]{24})?$"}]},
        "weights_sha256": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^[0-9a-f]{64}$"}]},
        "settings": {"type": "object"},
        "metrics": {"type": "array", "minItems": 1, "items": _METRIC},
    },
    "additionalProperties": False,
}

_VALIDATOR = Draft202012Validator(METRICS_JSON_SCHEMA)
_HEX_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
DEFAULT_FLOOR_METHOD = "real vs real: disjoint random halves"


def _plain_json(value: Any, where: str) -> Any:
    """numpy scalars and arrays, tuples and Paths -> the JSON types they stand for."""
    if isinstance(value, Mapping):
        return {str(key): _plain_json(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{where}: {type(value).__name__} cannot be stored in JSON")


def _sample_size(n: Any, where: str) -> int | dict[str, int]:
    if isinstance(n, Mapping):
        return {str(key): int(count) for key, count in n.items()}
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        return int(n)
    raise ValueError(f"{where}: expected a count or a mapping of counts, got {n!r}")


def _confidence_interval(ci: Any, where: str) -> dict | None:
    """Accept {"low", "high", "level", "method"} or a result dict with ci_low/ci_high/ci_level/ci_method."""
    if ci is None:
        return None
    if not isinstance(ci, Mapping):
        raise ValueError(f"{where}: expected a mapping with low, high, level and method, got {type(ci).__name__}")
    prefix = "ci_" if "ci_low" in ci else ""
    keys = [prefix + key for key in ("low", "high", "level", "method")]
    missing = [key for key in keys if key not in ci]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    if ci[keys[0]] is None and ci[keys[1]] is None:
        return None  # a result that could not have an interval, e.g. a single group
    return {
        "low": float(ci[keys[0]]),
        "high": float(ci[keys[1]]),
        "level": float(ci[keys[2]]),
        "method": str(ci[keys[3]]),
    }


def build_metric(
    name: str,
    value: float,
    n: int | Mapping[str, int],
    ci: Mapping | None = None,
    floor: Mapping | None = None,
    extra: Mapping | None = None,
) -> dict:
    """One entry of the ``metrics`` list of a metrics file.

    Parameters
    ----------
    name : str
        Lower-case identifier, unique within the file, e.g. ``"fid"``, ``"prdc_precision"``.
    value : float
        The metric, finite.
    n : int or mapping of str to int
        Images (or pairs, or groups) the value rests on; one count per set where there are
        several, e.g. ``{"real": 5000, "generated": 5000}``.
    ci : mapping or None, optional
        ``{"low", "high", "level", "method"}``, or directly a result dict of this package's
        metric functions (keys ``ci_low``, ``ci_high``, ``ci_level``, ``ci_method``). None
        (default) records that no interval was computed.
    floor : mapping or None, optional
        The same metric between two sets of real images: ``{"value", "n"}`` plus optional
        ``"ci"`` and ``"method"`` (default `DEFAULT_FLOOR_METHOD`). The output of
        `xray_generator.evaluation.distribution.real_vs_real_floor` is accepted as it is
        (its ``n_a``, ``n_b`` become ``n``). None (default) records that no floor exists.
    extra : mapping or None, optional
        Anything else worth keeping (subset sizes, per-group values, k).

    Returns
    -------
    metric : dict
        JSON-ready entry with keys ``name``, ``value``, ``n``, ``ci``, ``floor``, ``extra``.
    """
    where = f"metric {name!r}"
    floor_entry = None
    if floor is not None:
        if "value" not in floor:
            raise ValueError(f"{where} floor: missing value")
        if "n" in floor:
            floor_n = _sample_size(floor["n"], f"{where} floor.n")
        elif "n_a" in floor and "n_b" in floor:
            floor_n = {"a": int(floor["n_a"]), "b": int(floor["n_b"])}
        else:
            raise ValueError(f"{where} floor: missing n (or n_a and n_b)")
        method = floor.get("method", DEFAULT_FLOOR_METHOD)
        if "seed" in floor and "method" not in floor:
            method = f"{method} (seed {int(floor['seed'])})"
        floor_ci = floor.get("ci")
        if floor_ci is None and "ci_low" in floor:
            floor_ci = floor
        floor_entry = {
            "value": float(floor["value"]),
            "n": floor_n,
            "ci": _confidence_interval(floor_ci, f"{where} floor.ci"),
            "method": str(method),
        }
    return {
        "name": str(name),
        "value": float(value),
        "n": _sample_size(n, f"{where} n"),
        "ci": _confidence_interval(ci, f"{where} ci"),
        "floor": floor_entry,
        "extra": _plain_json(dict(extra or {}), f"{where} extra"),
    }


def _non_finite_numbers(value: Any, where: str):
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _non_finite_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_finite_numbers(item, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield where


def validate_metrics_json(obj: Any) -> None:
    """Check a metrics object against `METRICS_JSON_SCHEMA` and the rules a schema cannot state.

    Parameters
    ----------
    obj : dict
        A metrics object, e.g. ``json.load`` of a metrics file.

    Raises
    ------
    ValueError
        Naming the first bad field as a JSON path (``$.metrics[0].ci.low``) and what is wrong.
        Beyond the schema: every number is finite, metric names are unique, ``ci.low <=
        ci.high``, and ``date`` is ISO 8601 in UTC.
    """
    error = best_match(_VALIDATOR.iter_errors(obj))
    if error is not None:
        if error.validator == "required":  # name the missing field itself, not its parent
            missing = [key for key in error.validator_value if key not in error.instance]
            raise ValueError(f"metrics JSON field {error.json_path}.{missing[0]}: required field is missing")
        raise ValueError(f"metrics JSON field {error.json_path}: {error.message}")
    for where in _non_finite_numbers(obj, "$"):
        raise ValueError(f"metrics JSON field {where}: NaN or infinity is not a number JSON can hold")
    try:
        date = datetime.fromisoformat(obj["date"])
    except ValueError:
        raise ValueError(f"metrics JSON field $.date: {obj['date']!r} is not an ISO 8601 date") from None
    if date.utcoffset() is None or date.utcoffset().total_seconds() != 0:
        raise ValueError(f"metrics JSON field $.date: {obj['date']!r} must carry the UTC offset +00:00")
    seen: set[str] = set()
    for i, metric in enumerate(obj["metrics"]):
        if metric["name"] in seen:
            raise ValueError(f"metrics JSON field $.metrics[{i}].name: {metric['name']!r} appears twice")
        seen.add(metric["name"])
        for part, ci in (("ci", metric["ci"]), ("floor.ci", (metric["floor"] or {}).get("ci"))):
            if ci is not None and ci["low"] > ci["high"]:
                raise ValueError(f"metrics JSON field $.metrics[{i}].{part}: low {ci['low']} exceeds high {ci['high']}")


def git_commit(repo: str | Path = REPO_ROOT) -> str | None:
    """The commit checked out in `repo`, read from its ``.git`` files; None if there is none.

    Reads the files instead of running git, so it works where git is not installed. It cannot
    tell whether the working tree has uncommitted changes.
    """
    git_dir = Path(repo) / ".git"
    try:
        if git_dir.is_file():  # a worktree or submodule: ".git" names the real folder
            pointer = git_dir.read_text().strip()
            if not pointer.startswith("gitdir:"):
                return None
            git_dir = (Path(repo) / pointer[len("gitdir:"):].strip()).resolve()
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if _HEX_COMMIT.match(head) else None  # detached HEAD
        ref = head[len("ref:"):].strip()
        common_dir = git_dir
        if (git_dir / "commondir").is_file():
            common_dir = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        for base in (git_dir, common_dir):
            if (base / ref).is_file():
                commit = (base / ref).read_text().strip()
                return commit if _HEX_COMMIT.match(commit) else None
        packed = common_dir / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and _HEX_COMMIT.match(parts[0]):
                    return parts[0]
    except OSError:
        return None
    return None  # e.g. a repository without commits yet


def write_metrics_json(
    path: str | Path,
    model: str,
    settings: Mapping,
    weights_sha256: str | None,
    metrics: Sequence[Mapping],
) -> dict:
    """Validate and atomically write a metrics file.

    Parameters
    ----------
    path : str or Path
        Target, usually ``outputs/metrics/<model>.json``. Written to a temporary file in the
        same folder and renamed over the target, so readers never see half a file.
    model : str
        Model name as in the weights registry.
    settings : mapping
        How the numbers were made: feature extractor settings, numbers of images, seeds,
        sampler and steps, guidance.
    weights_sha256 : str or None
        SHA-256 of the evaluated weights (lower-case hex); None only for real-data baselines.
    metrics : sequence of dict
        Entries from `build_metric`.

    Returns
    -------
    document : dict
        What was written, with ``date`` (now, UTC) and ``git_commit`` (of the repository
        holding this package, None if unavailable) added.

    Raises
    ------
    ValueError
        If the document breaks the schema; nothing is written then.
    """
    document = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "model": model,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(REPO_ROOT),
        "weights_sha256": weights_sha256,
        "settings": _plain_json(dict(settings), "settings"),
        "metrics": [_plain_json(dict(metric), f"metrics[{i}]") for i, metric in enumerate(metrics)],
    }
    validate_metrics_json(document)
    atomic_write_text(Path(path), json.dumps(document, indent=2, allow_nan=False) + "\n")
    return document


def read_metrics_json(path: str | Path) -> dict:
    """Load and validate a metrics file; ValueError names the bad field."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    validate_metrics_json(document)
    return document
