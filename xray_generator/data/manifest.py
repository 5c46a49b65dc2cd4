"""Load, validate and query a chest X-ray manifest (`metadata.csv` in the schema of shared/data/cxr)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

# Column -> pandas dtype. `age` is nullable float; everything else is text except native_px.
MANIFEST_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "file": "string",
    "source": "string",
    "source_repo": "string",
    "patient_id": "string",
    "view": "string",
    "sex": "string",
    "age": "Float64",
    "labels": "string",
    "report": "string",
    "license": "string",
    "split": "string",
    "report_kind": "string",
    "native_px": "Int64",
}
# Whom to credit for each curated source (the `source` column), as its dataset card says. The
# licence of each image is its own `license` value.
SOURCE_CREDITS: dict[str, str] = {
    "pneumonia_kermany": "Kermany et al., Cell 2018 (Mendeley Data doi:10.17632/rscbjbr9sj); paediatric AP films",
    "covid_ieee8023": "Cohen et al., COVID-19 Image Data Collection, arXiv:2006.11988 (github.com/ieee8023/covid-chestxray-dataset)",
    "covid_actualmed": "Actualmed COVID-19 Chest X-ray Dataset Initiative (github.com/agchung/Actualmed-COVID-chestxray-dataset)",
    "covid_figure1": "Figure 1 COVID-19 Chest X-ray Dataset Initiative (github.com/agchung/Figure1-COVID-chestxray-dataset)",
    "nih_cxr14": "NIH Clinical Center ChestX-ray14: cite Wang et al., CVPR 2017 (ChestX-ray8) and acknowledge the NIH Clinical Center",
    "covid_mhh": (
        "COVID-19 Image Repository, Institute for Diagnostic and Interventional Radiology, Hannover Medical School "
        "(github.com/ml-workgroup/covid-19-image-repository): attribute doi:10.6084/m9.figshare.12275009"
    ),
}
REQUIRED_NON_EMPTY = ("image_id", "file", "source", "patient_id", "license", "split")
SPLITS = ("train", "val", "test")
VIEWS = ("PA", "AP", "frontal")


class ManifestError(ValueError):
    """A manifest that does not follow the schema; the message names the rows and columns."""


@dataclass
class Manifest:
    """A validated manifest: a typed table plus the folder its `file` paths are relative to."""

    table: pd.DataFrame
    root: Path

    def __len__(self) -> int:
        return len(self.table)

    def path_of(self, image_id: str) -> Path:
        row = self.table.loc[self.table["image_id"] == image_id]
        if row.empty:
            raise KeyError(f"no image with id {image_id!r}")
        return self.root / str(row["file"].iloc[0])

    def paths(self) -> list[Path]:
        return [self.root / f for f in self.table["file"]]

    def query(
        self,
        *,
        label: str | Iterable[str] | None = None,
        source: str | Iterable[str] | None = None,
        view: str | Iterable[str] | None = None,
        sex: str | Iterable[str] | None = None,
        split: str | Iterable[str] | None = None,
        min_age: float | None = None,
        max_age: float | None = None,
        native_px: int | None = None,
    ) -> "Manifest":
        """Rows matching every given filter. A label filter matches any of the given labels."""
        t = self.table
        mask = pd.Series(True, index=t.index)
        if label is not None:
            wanted = {label} if isinstance(label, str) else set(label)
            mask &= t["labels"].fillna("").map(lambda s: bool(wanted & set(split_labels(s)))).astype(bool)
        for column, value in (("source", source), ("view", view), ("sex", sex), ("split", split)):
            if value is not None:
                wanted = [value] if isinstance(value, str) else list(value)
                mask &= t[column].isin(wanted).fillna(False).astype(bool)
        if min_age is not None:
            mask &= (t["age"] >= min_age).fillna(False).astype(bool)
        if max_age is not None:
            mask &= (t["age"] <= max_age).fillna(False).astype(bool)
        if native_px is not None:
            mask &= (t["native_px"] == native_px).fillna(False).astype(bool)
        return Manifest(t.loc[mask].reset_index(drop=True), self.root)

    def label_counts(self) -> pd.Series:
        exploded = self.table["labels"].fillna("").map(split_labels).explode().dropna()
        return exploded[exploded != ""].value_counts()


def split_labels(labels: str | None) -> list[str]:
    """'Pneumonia; Viral pneumonia' -> ['Pneumonia', 'Viral pneumonia']."""
    if labels is None or (isinstance(labels, float)) or labels is pd.NA:
        return []
    return [part.strip() for part in str(labels).split(";") if part.strip()]


def sampling_weights(labels: pd.Series, label_weights: dict[str, float]) -> np.ndarray:
    """Each image's draw weight for training: the largest weight among its labels, 1 where none is named.

    `{"Viral pneumonia": 2.0}` draws every film labelled viral pneumonia twice as often. Names must be
    labels some image carries, so a typo fails here instead of silently training on the plain mix.
    """
    known = {label for value in labels for label in split_labels(value)}
    unknown = sorted(set(label_weights) - known)
    if unknown:
        raise ValueError(f"label_weights names labels no image carries: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    bad = {label: w for label, w in label_weights.items() if not (isinstance(w, (int, float)) and w > 0)}
    if bad:
        raise ValueError(f"label_weights must be positive numbers: {bad}")
    return np.array([max([label_weights[l] for l in split_labels(value) if l in label_weights], default=1.0) for value in labels], dtype=np.float64)


def class_of(labels: str | None, classes: tuple[str, ...]) -> int:
    """Index of the image's class, or -1 when it carries none of `classes`.

    `classes` run from general to specific, and an image takes the most specific one it carries:
    with ("Normal", "Pneumonia", "COVID-19"), "Pneumonia; Viral pneumonia; COVID-19" is COVID-19.
    """
    carried = set(split_labels(labels))
    matches = [i for i, name in enumerate(classes) if name in carried]
    return matches[-1] if matches else -1


def label_index(labels_field: str, labels: tuple[str, ...]) -> int | None:
    """The index of the one model label a manifest row carries, or None (no match, or several)."""
    names = set(split_labels(labels_field))
    matches = [i for i, label in enumerate(labels) if label in names]
    return matches[0] if len(matches) == 1 else None


def validate_table(table: pd.DataFrame) -> pd.DataFrame:
    """Check columns, required values, splits and per-patient split consistency; return a typed copy."""
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"manifest is missing columns: {', '.join(missing)}")
    typed = table[list(MANIFEST_COLUMNS)].copy()
    try:
        typed = typed.astype(MANIFEST_COLUMNS)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest has a value of the wrong type: {exc}") from exc
    for column in REQUIRED_NON_EMPTY:
        empty = typed[column].isna() | (typed[column].str.strip() == "")
        if empty.any():
            rows = ", ".join(str(i + 2) for i in typed.index[empty][:5])
            raise ManifestError(f"column {column!r} is empty on CSV line(s) {rows}")
    bad_split = ~typed["split"].isin(SPLITS)
    if bad_split.any():
        row = typed.loc[bad_split].iloc[0]
        raise ManifestError(f"image {row['image_id']}: split {row['split']!r} is not one of {SPLITS}")
    duplicated = typed["image_id"].duplicated()
    if duplicated.any():
        raise ManifestError(f"duplicate image_id {typed.loc[duplicated, 'image_id'].iloc[0]!r}")
    splits_per_patient = typed.groupby(["source", "patient_id"])["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if not leaking.empty:
        source, patient = leaking.index[0]
        raise ManifestError(f"patient {patient!r} ({source}) appears in more than one split")
    return typed


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Load and validate `metadata.csv` (or a folder holding one). Defaults to the full set or the sample."""
    from xray_generator.paths import default_data_dir

    path = Path(path) if path is not None else default_data_dir()
    csv_path = path / "metadata.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise FileNotFoundError(f"no manifest at {csv_path}")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values={"age": [""], "native_px": [""]})
    table = table.replace({"": pd.NA})
    return Manifest(validate_table(table), csv_path.parent)


def _format_age(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def write_manifest(table: pd.DataFrame | Manifest, path: str | Path) -> Path:
    """Validate and write `metadata.csv` atomically (temp file in the same folder, then os.replace).

    `path` is the CSV file or the folder to hold `metadata.csv`. Columns are written in
    `MANIFEST_COLUMNS` order; ages are written without a trailing '.0'. Returns the CSV path.
    """
    import io as _io

    from xray_generator.io import atomic_write_text

    frame = table.table if isinstance(table, Manifest) else table
    typed = validate_table(frame)
    path = Path(path)
    csv_path = path / "metadata.csv" if path.is_dir() or path.suffix == "" else path
    out = typed.astype(object).where(typed.notna(), "")
    out["age"] = typed["age"].astype(object).map(_format_age)
    buffer = _io.StringIO()
    out.to_csv(buffer, index=False, lineterminator="\r\n")  # as csv.writer, like the curated set
    atomic_write_text(csv_path, buffer.getvalue())
    return csv_path
