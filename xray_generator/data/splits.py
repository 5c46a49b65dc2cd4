"""Patient-wise train/val/test assignment, the rule of the curated set's dataset card.

A patient's split depends only on ``sha256("<seed>:<source>|<patient_id>")``, so it is the same
on every machine, for every image of that patient, and whichever importer produced the row. Adding
or removing other patients never moves a patient to another split.
"""
from __future__ import annotations

import hashlib

import pandas as pd

from xray_generator.data.manifest import SPLITS, ManifestError

DEFAULT_SEED = 1234
DEFAULT_FRACTIONS = (0.8, 0.1)  # train, val; test is the rest


class SplitLeakError(ManifestError):
    """A patient whose images are in more than one split; the message names the first few."""


def split_position(source: str, patient_id: str, seed: int = DEFAULT_SEED) -> float:
    """Map a patient to a number uniform in [0, 1).

    The first 8 bytes of ``sha256(f"{seed}:{source}|{patient_id}")``, read big-endian, divided by 2**64.
    """
    digest = hashlib.sha256(f"{seed}:{source}|{patient_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fractions(train: float, val: float) -> None:
    if not (0.0 <= train <= 1.0 and 0.0 <= val <= 1.0 and train + val <= 1.0):
        raise ValueError(f"split fractions must be in [0, 1] with train + val <= 1, got train={train}, val={val}")


def assign_split(
    source: str,
    patient_id: str,
    *,
    seed: int = DEFAULT_SEED,
    train: float = DEFAULT_FRACTIONS[0],
    val: float = DEFAULT_FRACTIONS[1],
) -> str:
    """The split of one patient: 'train' below `train`, 'val' below `train + val`, else 'test'.

    Parameters
    ----------
    source, patient_id : the manifest's ``source`` and ``patient_id`` (with its source prefix).
    seed : int, default 1234, the seed of the curated set.
    train, val : float, default 0.8 and 0.1, the expected fractions of patients; test gets the rest.
    """
    _check_fractions(train, val)
    position = split_position(source, patient_id, seed)
    if position < train:
        return "train"
    if position < train + val:
        return "val"
    return "test"


def assign_splits(
    table: pd.DataFrame,
    *,
    seed: int = DEFAULT_SEED,
    train: float = DEFAULT_FRACTIONS[0],
    val: float = DEFAULT_FRACTIONS[1],
) -> pd.Series:
    """The split of every row of a table with ``source`` and ``patient_id`` columns (index kept)."""
    _check_fractions(train, val)
    missing = [c for c in ("source", "patient_id") if c not in table.columns]
    if missing:
        raise ValueError(f"table needs columns source and patient_id; missing {missing}")
    patients = table[["source", "patient_id"]].astype(str).drop_duplicates()
    lookup = {
        (s, p): assign_split(s, p, seed=seed, train=train, val=val)
        for s, p in patients.itertuples(index=False, name=None)
    }
    keys = zip(table["source"].astype(str), table["patient_id"].astype(str))
    return pd.Series([lookup[k] for k in keys], index=table.index, name="split", dtype="string")


def patients_in_several_splits(table: pd.DataFrame) -> pd.DataFrame:
    """Patients (source, patient_id) whose rows carry more than one split, with those splits.

    Returns a DataFrame with columns ``source``, ``patient_id``, ``splits`` (sorted, comma-joined);
    empty when the table is clean.
    """
    grouped = table.groupby(["source", "patient_id"], dropna=False)["split"].agg(lambda s: sorted(set(map(str, s))))
    leaking = grouped[grouped.map(len) > 1]
    return pd.DataFrame(
        {
            "source": [s for s, _ in leaking.index],
            "patient_id": [p for _, p in leaking.index],
            "splits": [", ".join(v) for v in leaking.to_numpy()],
        }
    )


def check_patient_splits(table: pd.DataFrame) -> None:
    """Raise `SplitLeakError` if a patient appears in two splits, or a split is not train/val/test."""
    unknown = sorted(set(map(str, table["split"].dropna())) - set(SPLITS))
    if unknown or table["split"].isna().any():
        raise SplitLeakError(f"split values must be one of {SPLITS}; found {unknown or ['<empty>']}")
    leaking = patients_in_several_splits(table)
    if not leaking.empty:
        shown = "; ".join(f"{r.patient_id} ({r.source}): {r.splits}" for r in leaking.head(5).itertuples())
        raise SplitLeakError(f"{len(leaking)} patient(s) appear in more than one split: {shown}")
