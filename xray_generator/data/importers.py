"""Importers: public chest X-ray layouts, as a user downloads them, into our manifest schema.

Each importer reads one dataset's folder, maps its labels into `xray_generator.vocabulary`, assigns
patient-wise splits (`xray_generator.data.splits`, the dataset card's rule) and writes
``metadata.csv`` (columns `MANIFEST_COLUMNS`) atomically into `out_dir`. Image paths in the
manifest are relative to `out_dir`:

- ``convert=False`` (default): the downloaded files are referenced where they are
  (e.g. ``chest_xray/train/NORMAL/IM-0115-0001.jpeg``); ``native_px`` is the shorter side read from
  the file header.
- ``convert=True``: each image goes through `preprocessing.prepare_radiograph` (grayscale,
  16-bit percentile window, shorter side to `size`, centre crop; never upsampled: smaller images
  are skipped) and is written as an 8-bit PNG to ``out_dir/images/<source>/<image_id>.png``.
  Resizing makes a derivative work: check the source's licence before you share the result.

Importers
---------
`import_indiana`  Indiana University chest X-rays (Open-i; Kaggle layout ``indiana_reports.csv``,
                  ``indiana_projections.csv``, ``images_normalized/``): frontal images only.
`import_kermany`  Kermany paediatric pneumonia (``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``).
`import_nih`      NIH ChestX-ray14 (``Data_Entry_2017.csv`` and ``images*/``).
`import_rsna`     RSNA Pneumonia Detection Challenge (``stage2_train_metadata.csv`` and PNG or
                  DICOM images named ``<patientId>``).

The RSNA challenge images are a subset of NIH ChestX-ray14 under other ids: importing both counts
those films twice, and their two patient ids may land in different splits.

Run from the shell: ``python -m xray_generator.data.importers kermany ~/Downloads/chest_xray --out data/kermany --convert``.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

import xray_generator.io  # noqa: F401  (sets PIL's decompression-bomb limit before any decode)
from xray_generator.data.manifest import MANIFEST_COLUMNS, Manifest, load_manifest, write_manifest
from xray_generator.io import atomic_write
from xray_generator.data.preprocessing import DEFAULT_SIZE, UpsampleError, prepare_radiograph, to_uint8
from xray_generator.data.splits import DEFAULT_FRACTIONS, DEFAULT_SEED, assign_splits
from xray_generator.vocabulary import KNOWN_LABELS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


@dataclass(frozen=True)
class SourceInfo:
    """What the manifest records about a source: its short name, where it came from, its licence."""

    source: str
    origin: str  # written to the `source_repo` column
    license: str  # as the dataset states it
    citation: str


# The IU licence is as Open-i/NLM distribute the collection; shared/data/iu_reports/README.md notes
# that it was read from a third-party card and not yet checked against Open-i itself.
INDIANA = SourceInfo(
    source="iu_xray",
    origin="Open-i (U.S. National Library of Medicine): Indiana University chest X-ray collection",
    license="CC BY-NC-ND 4.0 (as distributed by Open-i)",
    citation="Demner-Fushman et al., J Am Med Inform Assoc 2016;23(2):304-310",
)
KERMANY = SourceInfo(
    source="pneumonia_kermany",
    origin="Mendeley Data doi:10.17632/rscbjbr9sj (Kaggle paultimothymooney/chest-xray-pneumonia)",
    license="CC BY 4.0 (Mendeley Data, Kermany et al. 2018)",
    citation="Kermany et al., Cell 2018;172(5):1122-1131",
)
# The source name and licence text are the curated set's (shared/data/cxr, DATASET_CARD.md): the
# split rule hashes the source name, so an NIH download imported here puts every patient in the same
# split as the curated `nih_cxr14` rows, and the licence reads the same in both manifests.
NIH = SourceInfo(
    source="nih_cxr14",
    origin="NIH Clinical Center (nihcc.app.box.com/v/ChestXray-NIHCC)",
    license=(
        "NIH Clinical Center ChestX-ray14: public release with no restrictions on use; "
        "cite Wang et al., CVPR 2017 and acknowledge the NIH Clinical Center"
    ),
    citation="Wang et al., CVPR 2017 (ChestX-ray8)",
)
RSNA = SourceInfo(
    source="rsna_pneumonia",
    origin="RSNA Pneumonia Detection Challenge 2018 (Kaggle; images from NIH ChestX-ray14)",
    license="RSNA Pneumonia Detection Challenge terms (non-commercial research use)",
    citation="Shih et al., Radiology: Artificial Intelligence 2019;1(1):e180041",
)
SOURCES: dict[str, SourceInfo] = {s.source: s for s in (INDIANA, KERMANY, NIH, RSNA)}

# NIH ChestX-ray14 finding names -> vocabulary names.
NIH_LABELS: dict[str, str] = {
    "No Finding": "Normal",
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural effusion",
    "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis",
    "Hernia": "Hernia",
    "Infiltration": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pleural_Thickening": "Pleural thickening",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}

# IU MeSH / Problems main terms (lower case, before the first '/') -> vocabulary names. Terms with
# no counterpart (opacity, calcified granuloma, cicatrix, airspace disease, devices...) are dropped
# rather than guessed.
IU_TERMS: dict[str, str] = {
    "normal": "Normal",
    "cardiomegaly": "Cardiomegaly",
    "pulmonary atelectasis": "Atelectasis",
    "atelectasis": "Atelectasis",
    "pleural effusion": "Pleural effusion",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "edema": "Edema",
    "emphysema": "Emphysema",
    "pulmonary emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "fibrosis": "Fibrosis",
    "hernia, hiatal": "Hernia",
    "hernia": "Hernia",
    "infiltrate": "Infiltration",
    "mass": "Mass",
    "nodule": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "tuberculosis": "Tuberculosis",
}


# ---------------------------------------------------------------------------------------------
# Shared machinery


def join_labels(labels: Iterable[str]) -> str:
    """Unique labels in vocabulary order, '; '-joined; 'Normal' is dropped when a finding is present."""
    unique = set(labels)
    if len(unique) > 1:
        unique.discard("Normal")
    return "; ".join(label for label in KNOWN_LABELS if label in unique)


def _collapse_space(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip() if text is not None and not pd.isna(text) else ""


def read_source_array(path: str | Path) -> np.ndarray:
    """Decode a downloaded image as its raw array: uint8, uint16 or float (H, W).

    EXIF orientation is applied. Palette, RGB and LA images become 8-bit luma (as PIL's 'L').
    DICOM (``.dcm``, needs pydicom) gets its modality LUT, and MONOCHROME1 is inverted so bone is bright.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        import pydicom
        from pydicom.pixels import apply_modality_lut

        dataset = pydicom.dcmread(path)
        pixels = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float64)
        if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
        if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
            pixels = pixels[0]  # multi-frame: the first frame
        return pixels
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(image, dtype=np.uint16)
        if image.mode == "I":
            array = np.asarray(image)
            return array.astype(np.uint16) if array.min() >= 0 and array.max() <= 65535 else array.astype(np.float64)
        if image.mode == "F":
            return np.asarray(image, dtype=np.float64)
        return np.asarray(image.convert("L"), dtype=np.uint8)


def _header_shorter_side(path: Path) -> int | None:
    try:
        with Image.open(path) as image:
            return min(image.size)
    except (OSError, SyntaxError, Image.DecompressionBombError):
        return None


def _write_png_atomically(image_uint8: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda handle: Image.fromarray(image_uint8, mode="L").save(handle, format="PNG", optimize=True), make_parents=True)

def _index_files(root: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """File name -> path for every image under `root` (first in sorted order wins; macOS debris skipped)."""
    wanted = {s.lower() for s in suffixes}
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX" and not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in wanted and not name.startswith("._"):
                found.setdefault(name, Path(dirpath) / name)
    return found


def _empty_record(info: SourceInfo) -> dict[str, object]:
    return {
        "source": info.source,
        "source_repo": info.origin,
        "view": "frontal",
        "sex": None,
        "age": None,
        "labels": "",
        "report": "",
        "license": info.license,
        "report_kind": "none",
        "native_px": None,
    }


def _finish(
    records: list[dict[str, object]],
    out_dir: Path,
    *,
    convert: bool,
    size: int,
    seed: int,
    fractions: tuple[float, float],
    workers: int,
) -> Manifest:
    """Deduplicate, convert or reference the images, assign splits, write metadata.csv."""
    skipped: Counter[str] = Counter()
    unique: dict[str, dict[str, object]] = {}
    for record in records:
        if record["image_id"] in unique:
            skipped["duplicate image id"] += 1
            continue
        unique[str(record["image_id"])] = record
    records = list(unique.values())
    out_dir.mkdir(parents=True, exist_ok=True)

    def place(record: dict[str, object]) -> dict[str, object] | str:
        src = Path(str(record.pop("src_path")))
        if convert:
            try:
                image = prepare_radiograph(read_source_array(src), size)
            except UpsampleError:
                return f"shorter side under {size} px (never upsampled)"
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                log.debug("could not read %s: %s", src, exc)
                return "unreadable image"
            target = out_dir / "images" / str(record["source"]) / f"{record['image_id']}.png"
            _write_png_atomically(to_uint8(image), target)
            record["file"] = target.relative_to(out_dir).as_posix()
            record["native_px"] = size
        else:
            if src.suffix.lower() == ".dcm":
                raise ValueError(f"{src.name} is DICOM, which the manifest readers do not decode; import with convert=True")
            side = _header_shorter_side(src)
            if side is None:
                return "unreadable image"
            record["file"] = Path(os.path.relpath(src.resolve(), out_dir.resolve())).as_posix()
            record["native_px"] = side
        return record

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        placed = list(pool.map(place, records))
    kept = [r for r in placed if isinstance(r, dict)]
    skipped.update(r for r in placed if isinstance(r, str))
    for reason, count in sorted(skipped.items()):
        log.warning("skipped %d image(s): %s", count, reason)
    if not kept:
        raise ValueError(f"no importable images found (skipped: {dict(skipped) or 'none found'})")

    table = pd.DataFrame(kept)
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    table["split"] = assign_splits(table, seed=seed, train=fractions[0], val=fractions[1])
    table = table[list(MANIFEST_COLUMNS)].replace({"": pd.NA})
    csv_path = write_manifest(table, out_dir / "metadata.csv")
    log.info("wrote %d rows to %s", len(table), csv_path)
    return load_manifest(csv_path)


def _find_file(root: Path, names: Iterable[str]) -> Path | None:
    """The first of `names` in `root` or one folder below it."""
    for name in names:
        for candidate in (root / name, *sorted(root.glob(f"*/{name}"))):
            if candidate.is_file():
                return candidate
    return None


def _require_dir(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no dataset folder at {path}")
    return path


# ---------------------------------------------------------------------------------------------
# Indiana University (Open-i)


def iu_labels(mesh: str | None, problems: str | None = None) -> str:
    """IU ``MeSH`` and ``Problems`` fields -> '; '-joined vocabulary labels (unmapped terms dropped).

    'Cardiomegaly/borderline;Pulmonary Artery/enlarged' -> 'Cardiomegaly'. A 'Thickening' term
    qualified with 'pleura' becomes 'Pleural thickening'.
    """
    labels = []
    for field in (mesh, problems):
        for term in _collapse_space(field).split(";"):
            parts = [p.strip().lower() for p in term.split("/")]
            if not parts[0]:
                continue
            if parts[0] == "thickening" and any(p.startswith("pleura") for p in parts[1:]):
                labels.append("Pleural thickening")
            elif parts[0] in IU_TERMS:
                labels.append(IU_TERMS[parts[0]])
    return join_labels(labels)


def iu_report(findings: object, impression: object) -> str:
    """'Findings: … Impression: …' from the two report sections (either may be missing)."""
    parts = []
    if _collapse_space(findings):
        parts.append(f"Findings: {_collapse_space(findings)}")
    if _collapse_space(impression):
        parts.append(f"Impression: {_collapse_space(impression)}")
    return " ".join(parts)


def _iu_view(description: object) -> str:
    """'Xray Chest PA and Lateral' -> 'PA'; ambiguous or unnamed frontal views stay 'frontal'."""
    words = set(re.findall(r"[A-Za-z]+", str(description or "")))
    has_pa, has_ap = "PA" in words, "AP" in words
    return "PA" if has_pa and not has_ap else "AP" if has_ap and not has_pa else "frontal"


def import_indiana(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    convert: bool = False,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float] = DEFAULT_FRACTIONS,
    workers: int = 2,
) -> Manifest:
    """Import the Indiana University chest X-ray collection (Kaggle layout of the Open-i release).

    Expects ``indiana_reports.csv`` (uid, MeSH, Problems, image, findings, impression),
    ``indiana_projections.csv`` (uid, filename, projection) and the PNGs (``images_normalized/``,
    or anywhere under `root`). Only ``projection == 'Frontal'`` rows are kept; rows whose image is
    missing are skipped. One study (uid) is taken as one patient: the release does not link studies
    of the same person. ``report`` is 'Findings: … Impression: …' (``report_kind='radiology_report'``),
    de-identification gaps ('XXXX') included. ``view`` is PA/AP when the exam description names
    exactly one of them, else 'frontal'.

    Parameters
    ----------
    root : the downloaded folder. out_dir : where metadata.csv goes (default `root`).
    convert, size : see the module docstring. seed, fractions : patient-wise split (see `splits`).
    workers : threads for reading and converting images.
    """
    root = _require_dir(root)
    reports_csv = _find_file(root, ["indiana_reports.csv"])
    projections_csv = _find_file(root, ["indiana_projections.csv"])
    if reports_csv is None or projections_csv is None:
        raise FileNotFoundError(f"{root} needs indiana_reports.csv and indiana_projections.csv")
    reports = pd.read_csv(reports_csv, dtype=str, keep_default_na=False).set_index("uid")
    projections = pd.read_csv(projections_csv, dtype=str, keep_default_na=False)
    frontal = projections[projections["projection"].str.strip().str.lower() == "frontal"]
    files = _index_files(root, (".png", ".jpg", ".jpeg"))

    records, missing = [], 0
    for uid, filename in frontal[["uid", "filename"]].itertuples(index=False, name=None):
        src = files.get(filename)
        if src is None or uid not in reports.index:
            missing += 1
            continue
        report = reports.loc[uid]
        record = _empty_record(INDIANA)
        text = iu_report(report.get("findings"), report.get("impression"))
        stem = re.sub(r"(\.dcm)?\.(png|jpe?g)$", "", filename, flags=re.IGNORECASE)
        record.update(
            image_id=f"iu_{stem}",
            patient_id=f"iu-{uid}",
            view=_iu_view(report.get("image")),
            labels=iu_labels(report.get("MeSH"), report.get("Problems")),
            report=text,
            report_kind="radiology_report" if text else "none",
            src_path=src,
        )
        records.append(record)
    if missing:
        log.warning("skipped %d frontal image(s) with no file or no report", missing)
    out = Path(out_dir) if out_dir is not None else root
    return _finish(records, out, convert=convert, size=size, seed=seed, fractions=fractions, workers=workers)


# ---------------------------------------------------------------------------------------------
# Kermany paediatric pneumonia

_KERMANY_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_KERMANY_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)", re.IGNORECASE)


def kermany_patient_id(file_name: str) -> str:
    """The card's rule: 'person123_virus_245.jpeg' -> 'kermany-person123',
    'IM-0117-0001.jpeg' -> 'kermany-IM-0117', 'NORMAL2-IM-0096-0001.jpeg' -> 'kermany-NORMAL2-IM-0096'.

    It can merge different children but never splits one child. A name that fits neither pattern
    keeps its whole stem.
    """
    stem = Path(file_name).stem
    match = _KERMANY_PERSON.match(stem) or _KERMANY_NORMAL.match(stem)
    return f"kermany-{match.group(1) if match else stem}"


def kermany_labels(class_dir: str, file_name: str) -> str:
    """NORMAL -> 'Normal'; PNEUMONIA with 'bacteria'/'virus' in the name -> also the subtype."""
    if class_dir.upper() == "NORMAL":
        return "Normal"
    name = file_name.lower()
    if "bacteria" in name:
        return "Pneumonia; Bacterial pneumonia"
    if "virus" in name:
        return "Pneumonia; Viral pneumonia"
    return "Pneumonia"


def import_kermany(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    convert: bool = False,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float] = DEFAULT_FRACTIONS,
    workers: int = 2,
) -> Manifest:
    """Import the Kermany paediatric pneumonia set (``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``).

    `root` may be the ``chest_xray`` folder or a folder above it (the Kaggle zip nests
    ``chest_xray/chest_xray``). The release's train/val/test folders are ignored: the same child
    appears in both its train and test folders, so splits are reassigned per patient
    (`kermany_patient_id`). A file name seen twice is kept once (first in sorted path order).
    All images are paediatric AP films (``view='AP'``).
    """
    root = _require_dir(root)
    candidates = [root, root / "chest_xray", root / "chest_xray" / "chest_xray"]
    base = next((c for c in candidates if any((c / s).is_dir() for s in ("train", "val", "test"))), None)
    if base is None:
        raise FileNotFoundError(f"no train/val/test folders under {root} (expected chest_xray/train/NORMAL/...)")
    records = []
    for split_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name.lower() in ("train", "val", "test")):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.upper() in ("NORMAL", "PNEUMONIA")):
            for src in sorted(class_dir.iterdir()):
                if src.suffix.lower() not in (".jpeg", ".jpg", ".png") or src.name.startswith("."):
                    continue
                record = _empty_record(KERMANY)
                record.update(
                    image_id=f"kermany_{src.stem}",
                    patient_id=kermany_patient_id(src.name),
                    view="AP",
                    labels=kermany_labels(class_dir.name, src.name),
                    src_path=src,
                )
                records.append(record)
    out = Path(out_dir) if out_dir is not None else root
    return _finish(records, out, convert=convert, size=size, seed=seed, fractions=fractions, workers=workers)


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14


def nih_labels(finding_labels: str) -> str:
    """'Cardiomegaly|Effusion' -> 'Cardiomegaly; Pleural effusion'; 'No Finding' -> 'Normal'."""
    labels = []
    for term in str(finding_labels).split("|"):
        term = term.strip()
        if term in NIH_LABELS:
            labels.append(NIH_LABELS[term])
        elif term:
            log.warning("unknown NIH finding %r dropped", term)
    return join_labels(labels)


def parse_age_years(value: object, maximum: float = 120.0) -> float | None:
    """'58', '058Y', '6M', '10D' -> years; empty, unparsable or above `maximum` -> None.

    NIH ChestX-ray14 has a few ages above 140 (data-entry errors); they become None.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*", str(value or ""), flags=re.IGNORECASE)
    if not match:
        return None
    number = float(match.group(1))
    years = number / {"": 1, "Y": 1, "M": 12, "W": 52.18, "D": 365.25}[match.group(2).upper()]
    return round(years, 2) if years <= maximum else None


def _sex(value: object) -> str | None:
    text = str(value or "").strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text)


def _view(value: object) -> str:
    text = str(value or "").strip().upper()
    return text if text in ("PA", "AP") else "frontal"


def import_nih(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    convert: bool = False,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float] = DEFAULT_FRACTIONS,
    workers: int = 2,
) -> Manifest:
    """Import NIH ChestX-ray14 (``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv`` + PNGs).

    Columns used: Image Index, Finding Labels ('|'-separated; 'No Finding' -> Normal), Patient ID,
    Patient Age, Patient Gender, View Position. Images are found anywhere under `root`
    (``images/`` or the Kaggle ``images_001/images/`` …); rows whose PNG is missing are skipped, so
    a partial download imports what is there. The official train/test lists are not used: splits
    are patient-wise by our rule. Labels were text-mined from reports and are noisy.
    """
    root = _require_dir(root)
    entry_csv = _find_file(root, ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"])
    if entry_csv is None:
        raise FileNotFoundError(f"no Data_Entry_2017.csv under {root}")
    entries = pd.read_csv(entry_csv, dtype=str, keep_default_na=False)
    needed = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]
    missing_columns = [c for c in needed if c not in entries.columns]
    if missing_columns:
        raise ValueError(f"{entry_csv.name} lacks columns {missing_columns}")
    files = _index_files(root, (".png",))
    records, missing = [], 0
    for row in entries[needed].itertuples(index=False, name=None):
        name, findings, patient, age, sex, view = row
        src = files.get(name)
        if src is None:
            missing += 1
            continue
        patient = patient.strip()
        record = _empty_record(NIH)
        record.update(
            image_id=f"nih_{Path(name).stem}",
            patient_id=f"nih-{int(patient) if patient.isdigit() else patient}",
            view=_view(view),
            sex=_sex(sex),
            age=parse_age_years(age),
            labels=nih_labels(findings),
            src_path=src,
        )
        records.append(record)
    if missing:
        log.warning("skipped %d row(s) of %s whose image is not under %s", missing, entry_csv.name, root)
    out = Path(out_dir) if out_dir is not None else root
    return _finish(records, out, convert=convert, size=size, seed=seed, fractions=fractions, workers=workers)


# ---------------------------------------------------------------------------------------------
# RSNA pneumonia

_RSNA_OPTIONAL = {
    "age": ("age", "PatientAge", "Patient Age", "patientAge"),
    "sex": ("sex", "PatientSex", "Patient Sex", "gender", "Patient Gender"),
    "view": ("view", "ViewPosition", "View Position", "viewPosition"),
    "class": ("class", "Class"),
}


def _first_column(table: pd.DataFrame, names: Iterable[str]) -> str | None:
    return next((n for n in names if n in table.columns), None)


def rsna_labels(target: int, detailed_class: str | None = None) -> str:
    """Target 1 -> 'Pneumonia'; Target 0 -> 'Normal', unless the detailed class says
    'No Lung Opacity / Not Normal' (an abnormal film without pneumonia), which gets no label."""
    if target:
        return "Pneumonia"
    if detailed_class and "not normal" in detailed_class.lower():
        return ""
    return "Normal"


def import_rsna(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    convert: bool = False,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float] = DEFAULT_FRACTIONS,
    workers: int = 2,
) -> Manifest:
    """Import the RSNA Pneumonia Detection Challenge training set.

    Expects ``stage2_train_metadata.csv`` (or the challenge's ``stage_2_train_labels.csv``) with
    ``patientId`` and ``Target``; several rows per patientId (one per box) are merged, Target 1 on
    any row wins. Age, sex, view and the detailed class are taken from the CSV when it has them
    (``age``/``PatientAge``, ``sex``/``PatientSex``, ``view``/``ViewPosition``, ``class``), a sibling
    ``stage_2_detailed_class_info.csv`` supplies the class, and DICOM headers fill what is missing.
    Images: ``<patientId>.png``/``.jpg``/``.dcm`` anywhere under `root` (``Training/Images/`` in the
    processed Kaggle copy, ``stage_2_train_images/`` in the challenge). DICOM needs ``convert=True``.
    Labels: see `rsna_labels`. Each patientId has one film, so it is the patient id.
    """
    root = _require_dir(root)
    labels_csv = _find_file(root, ["stage2_train_metadata.csv", "stage_2_train_labels.csv"])
    if labels_csv is None:
        raise FileNotFoundError(f"no stage2_train_metadata.csv under {root}")
    table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    if not {"patientId", "Target"} <= set(table.columns):
        raise ValueError(f"{labels_csv.name} needs columns patientId and Target")
    columns = {key: _first_column(table, names) for key, names in _RSNA_OPTIONAL.items()}
    class_csv = _find_file(root, ["stage_2_detailed_class_info.csv"])
    if columns["class"] is None and class_csv is not None:
        classes = pd.read_csv(class_csv, dtype=str, keep_default_na=False).drop_duplicates("patientId")
        table = table.merge(classes[["patientId", "class"]], on="patientId", how="left")
        columns["class"] = "class"

    table["Target"] = pd.to_numeric(table["Target"], errors="coerce").fillna(0).astype(int)
    aggregations = {"Target": "max", **{c: "first" for c in columns.values() if c is not None}}
    per_patient = table.groupby("patientId", sort=True).agg(aggregations)

    by_stem: dict[str, Path] = {}
    for name, path in _index_files(root).items():
        # prefer a decoded image over DICOM when both exist
        stem = Path(name).stem
        if stem not in by_stem or by_stem[stem].suffix.lower() == ".dcm":
            by_stem[stem] = path

    def value(row: pd.Series, key: str) -> str | None:
        column = columns[key]
        return str(row[column]) if column is not None and str(row[column]).strip() else None

    records, missing = [], 0
    for patient, row in per_patient.iterrows():
        src = by_stem.get(patient)
        if src is None:
            missing += 1
            continue
        age, sex, view = value(row, "age"), value(row, "sex"), value(row, "view")
        if src.suffix.lower() == ".dcm" and None in (age, sex, view):
            import pydicom

            header = pydicom.dcmread(src, stop_before_pixels=True)
            age = age or str(getattr(header, "PatientAge", "") or "")
            sex = sex or str(getattr(header, "PatientSex", "") or "")
            view = view or str(getattr(header, "ViewPosition", "") or "")
        record = _empty_record(RSNA)
        record.update(
            image_id=f"rsna_{patient}",
            patient_id=f"rsna-{patient}",
            view=_view(view),
            sex=_sex(sex),
            age=parse_age_years(age),
            labels=rsna_labels(int(row["Target"]), value(row, "class")),
            src_path=src,
        )
        records.append(record)
    if missing:
        log.warning("skipped %d patientId(s) of %s with no image under %s", missing, labels_csv.name, root)
    out = Path(out_dir) if out_dir is not None else root
    return _finish(records, out, convert=convert, size=size, seed=seed, fractions=fractions, workers=workers)


IMPORTERS: dict[str, Callable[..., Manifest]] = {
    "indiana": import_indiana,
    "kermany": import_kermany,
    "nih": import_nih,
    "rsna": import_rsna,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xray_generator.data.importers",
        description="Turn a downloaded public chest X-ray dataset into a CXR Studio manifest (metadata.csv).",
    )
    parser.add_argument("dataset", choices=sorted(IMPORTERS), help="which layout the folder holds")
    parser.add_argument("root", type=Path, help="the downloaded folder")
    parser.add_argument("--out", type=Path, default=None, help="folder for metadata.csv (default: root)")
    parser.add_argument("--convert", action="store_true", help="write 8-bit PNGs (shorter side --size, centre crop)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="side of converted images (default 256)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (default 1234)")
    parser.add_argument("--workers", type=int, default=2, help="threads for reading/converting images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    manifest = IMPORTERS[args.dataset](
        args.root, args.out, convert=args.convert, size=args.size, seed=args.seed, workers=args.workers
    )
    counts = manifest.table.groupby("split").size().to_dict()
    print(f"{len(manifest)} images, splits {counts}, manifest {manifest.root / 'metadata.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
