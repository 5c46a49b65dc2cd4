"""Build the shipped sample (`dataset/`): about 300 images of the curated set, with their metadata rows.

    python -m xray_generator.data.make_sample [--src shared/data/cxr] [--out dataset] [--seed 1234]

Deterministic: the same source manifest and seed give the same files. The sample is stratified by
source, stored resolution (``native_px``) and finding class, and every stratum contributes to all
splits it has (about 70/15/15, so the test split is big enough for smoke tests). Patient-wise splits
are kept as they are in the curated set. Within a stratum, distinct patients are taken before a
second image of the same patient.

Licences: images whose licence forbids derivatives (CC BY-NC-ND*) or that have no stated licence
(ieee8023 "unspecified", and the Actualmed / Figure 1 images, whose READMEs say "research purposes
only" but grant no licence) are left out. ``--include-research-only`` adds the Actualmed / Figure 1
images for a build that is not redistributed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from xray_generator.data.manifest import SOURCE_CREDITS, Manifest, load_manifest, split_labels, write_manifest
from xray_generator.data.splits import check_patient_splits

SEED = 1234
# What a rebuild replaces in the sample folder; anything else there is kept.
SAMPLE_OWNS = ("images", "metadata.csv", "README.md")
MAX_BYTES = 15 * 1024 * 1024

# Licence values (as written in metadata.csv) that a redistributed sample must not contain.
NO_DERIVATIVES = "NC-ND"
UNSPECIFIED = "unspecified"
NO_EXPLICIT_LICENCE = "no explicit licence"

# Finding class of a row: the first of these labels it carries; 'Other finding' for any other label.
# The NIH findings come after the labels of the first sources, which never carry them, so the
# classes of those sources' rows did not change when they were added.
CLASS_ORDER = ("COVID-19", "Bacterial pneumonia", "Viral pneumonia", "Normal", "Cardiomegaly", "Pleural effusion", "Atelectasis")
OTHER, UNLABELLED = "Other finding", "(no label)"

# Images per (source, native_px) and finding class. A class not listed is not sampled; a quota
# above what is available takes everything. Strata are drawn in the order written here (classes in
# name order) from one random stream, so a stratum appended at the end leaves every earlier pick as
# it was: add new strata at the end.
QUOTAS: dict[tuple[str, int], dict[str, int]] = {
    ("covid_actualmed", 256): {"COVID-19": 10, "Normal": 8},
    ("covid_figure1", 256): {"COVID-19": 10, "Normal": 3},
    ("covid_ieee8023", 256): {
        "COVID-19": 60,
        "Bacterial pneumonia": 16,
        "Viral pneumonia": 12,
        "Normal": 12,
        OTHER: 20,
        UNLABELLED: 6,
    },
    ("pneumonia_kermany", 224): {"Normal": 24, "Bacterial pneumonia": 24, "Viral pneumonia": 24},
    ("pneumonia_kermany", 256): {"Normal": 30, "Bacterial pneumonia": 30, "Viral pneumonia": 30},
    # Added with the NIH and MHH sources: adult normals, NIH findings, and MHH's CLAHE-processed ICU films.
    ("nih_cxr14", 256): {"Normal": 4, "Cardiomegaly": 2, "Pleural effusion": 2, "Atelectasis": 2, OTHER: 2},
    ("covid_mhh", 256): {"COVID-19": 4},
}
TEST_FRACTION = VAL_FRACTION = 0.15
MIN_PER_HELD_OUT_SPLIT = 2



def finding_class(labels: str | None) -> str:
    """The stratum class of a '; '-joined label string."""
    present = split_labels(labels)
    for name in CLASS_ORDER:
        if name in present:
            return name
    return OTHER if present else UNLABELLED


def redistributable(table: pd.DataFrame, include_research_only: bool = False) -> pd.Series:
    """True for rows whose licence allows sharing a resized copy (see the module docstring)."""
    licence = table["license"].fillna("")
    allowed = ~licence.str.contains(NO_DERIVATIVES, regex=False) & ~licence.str.startswith(UNSPECIFIED)
    if not include_research_only:
        allowed &= ~licence.str.contains(NO_EXPLICIT_LICENCE, regex=False)
    return allowed.astype(bool)


def _patients_first(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Random order in which every patient's first image comes before any patient's second."""
    shuffled = rows.sort_values("image_id").iloc[rng.permutation(len(rows))]
    rank = shuffled.groupby("patient_id", sort=False).cumcount()
    return shuffled.assign(_rank=rank.to_numpy()).sort_values("_rank", kind="stable").drop(columns="_rank")


def split_quota(n: int) -> dict[str, int]:
    """Images a stratum of quota `n` takes from test, val and train.

    About 15/15/70 %, with at least `MIN_PER_HELD_OUT_SPLIT` from each held-out split. A stratum too
    small for that (n <= 4) takes one test image (n >= 2), one val image (n >= 3) and the rest from
    train, so its training share is never empty.
    """
    held = {"test": max(MIN_PER_HELD_OUT_SPLIT, round(TEST_FRACTION * n)), "val": max(MIN_PER_HELD_OUT_SPLIT, round(VAL_FRACTION * n))}
    if held["test"] + held["val"] >= n:
        held = {"test": int(n >= 2), "val": int(n >= 3)}
    return {**held, "train": n - held["test"] - held["val"]}


def _pick(rows: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    ordered = _patients_first(rows, rng)
    if n >= len(rows):
        return ordered
    wanted = split_quota(n)
    chosen = [ordered[ordered["split"] == s].head(k) for s, k in wanted.items()]
    taken = pd.concat(chosen)
    if len(taken) < n:  # a split had too few rows: fill from the rest in the same order
        rest = ordered.loc[~ordered.index.isin(taken.index)]
        taken = pd.concat([taken, rest.head(n - len(taken))])
    return taken.head(n)


def select_sample(manifest: Manifest, seed: int = SEED, include_research_only: bool = False) -> pd.DataFrame:
    """The sample's rows (sorted by image_id) chosen from a curated manifest."""
    table = manifest.table.loc[redistributable(manifest.table, include_research_only)].copy()
    table["_class"] = table["labels"].map(finding_class)
    rng = np.random.default_rng(seed)
    parts = []
    for (source, native_px), quotas in QUOTAS.items():
        for name, n in sorted(quotas.items()):
            rows = table[(table["source"] == source) & (table["native_px"] == native_px) & (table["_class"] == name)]
            if len(rows):
                parts.append(_pick(rows, n, rng))
    sample = pd.concat(parts).drop(columns="_class")
    return sample.sort_values("image_id").reset_index(drop=True)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    align = "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(frame.columns))) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, align, *body])


def composition_tables(sample: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Source x class, source x split, licence per source, and multi-label counts of a sample."""
    frame = sample.assign(
        stratum=sample["source"].astype(str) + " (" + sample["native_px"].astype(str) + " px)",
        finding_class=sample["labels"].map(finding_class),
    )
    by_class = pd.crosstab(frame["stratum"], frame["finding_class"], margins=True, margins_name="all")
    by_split = pd.crosstab(frame["stratum"], frame["split"], margins=True, margins_name="all")
    by_split = by_split[[c for c in ("train", "val", "test", "all") if c in by_split.columns]]
    licences = frame.groupby(["source", "license"]).size().rename("images").reset_index()
    labels = frame["labels"].map(split_labels).explode().dropna().value_counts().rename("images")
    return {
        "by_class": by_class.reset_index().rename(columns={"stratum": "source (native_px)"}),
        "by_split": by_split.reset_index().rename(columns={"stratum": "source (native_px)"}),
        "licences": licences,
        "labels": labels.rename_axis("label").reset_index(),
    }


def render_readme(sample: pd.DataFrame, total_bytes: int, seed: int, include_research_only: bool) -> str:
    tables = composition_tables(sample)
    sources = "\n".join(f"- `{s}`: {SOURCE_CREDITS.get(s, s)}" for s in sorted(sample["source"].unique()))
    excluded = (
        "CC BY-NC-ND / CC BY-NC-ND 4.0 (no derivatives: our PNGs are resized copies) and "
        "\"unspecified\" (no licence stated in ieee8023)"
    )
    if include_research_only:
        excluded += (
            ". **This build also holds the Actualmed and Figure 1 images, which have no explicit licence "
            "(\"research purposes only\"): keep it local, do not redistribute it**"
        )
    else:
        excluded += (
            ", and the Actualmed and Figure 1 images (their READMEs say \"intended to be used for research "
            "purposes only\" but grant no licence, so there is no permission to redistribute them)"
        )
    return f"""# CXR Studio sample dataset (`dataset/`)

**Research and education use only. Not for clinical use.** These are real, de-identified chest
radiographs from public research datasets, kept here so that the tests, the dataset explorer and a
first training run work without the full set.

This folder holds {len(sample)} frontal chest X-rays ({total_bytes / 1e6:.1f} MB) chosen from the curated
set in `shared/data/cxr` (see its `DATASET_CARD.md` for sources, curation rules and caveats), plus
their rows of its `metadata.csv`. The schema is the same (`xray_generator.data.manifest.MANIFEST_COLUMNS`);
`file` is relative to this folder (`images/<source folder>/<file>`), and image files are byte-for-byte
copies of the curated ones: 256×256 8-bit PNGs (`native_px = 256`) and 224×224 Kermany JPEGs stored
unchanged (`native_px = 224`, never upscaled; load with `Image.open(f).convert("L")`).

Built by `python -m xray_generator.data.make_sample --seed {seed}` (deterministic: a rebuild gives the same files).
Do not edit by hand: change the script and rebuild.

## How it was sampled

1. Only images whose licence allows sharing a resized copy. Left out: {excluded}.
2. Strata: source × stored resolution (`native_px`) × finding class (the first of {", ".join(CLASS_ORDER)}
   that the image carries; "{OTHER}" for any other label; "{UNLABELLED}" for none). Each stratum has a
   fixed quota (`QUOTAS` in the script).
3. Within a stratum about 70/15/15 % of the images come from train/val/test (at least 2 from val and
   test where the stratum has them; a stratum of 4 or fewer takes 1 test, 1 val and the rest train), so
   the test split is usable for smoke tests. Splits are the curated set's patient-wise splits, unchanged;
   no patient is in two splits.
4. Random order (seed {seed}), taking one image per patient before a second image of any patient. The
   strata are drawn one after another from one random stream, in the order of `QUOTAS`; strata added
   later (NIH, MHH) come last, so adding them left every earlier image of the sample as it was.

## Composition

By finding class:

{_markdown_table(tables["by_class"])}

By split:

{_markdown_table(tables["by_split"])}

Labels (an image can have several):

{_markdown_table(tables["labels"])}

## Licences (as the sources state them)

{_markdown_table(tables["licences"])}

Each image keeps its own `license` value in `metadata.csv`. Non-commercial (NC) and share-alike (SA)
terms apply to those images and to anything you derive from them. When you use an image, credit its source:

{sources}

For ieee8023 images, the per-image author, article (doi/url) and licence are in that repository's
`metadata.csv`; our `image_id` is `ieee_<number>_<original file stem>`.

## Caveats

The caveats of the curated set apply here too. The ones that matter most for this sample:

- Source and label are confounded: all Kermany films are paediatric AP films, and COVID-19 comes
  only from adult COVID collections. NIH adds adult normals and NIH's findings, but no COVID-19.
  Stratify by `source` when you evaluate.
- The 224-px Kermany images were squashed, not cropped, to a square and are lossy JPEGs.
- NIH labels were text-mined from reports by NIH and are noisy; a film often has several. The curated
  NIH films are a 500 "No Finding" + 500 Pneumonia draw, so every NIH film with a finding here also
  carries Pneumonia.
- MHH films were contrast-enhanced (CLAHE) by their source, which marks them as MHH; most are supine
  ICU films. 10 of the 16 curated MHH patients also have films in covid_ieee8023 (in the same split).
- `report` holds clinical case notes (ieee8023), not radiology reports; NIH and MHH rows have none.
- The sample is far too small for training a useful model: it is for tests, demos and smoke runs.
"""


def build_sample(
    src: str | Path,
    out: str | Path,
    *,
    seed: int = SEED,
    include_research_only: bool = False,
    max_bytes: int = MAX_BYTES,
) -> Manifest:
    """Select, copy and describe the sample; replace `out` in one step (build in a sibling temp folder).

    Files in `out` that the sample does not own (anything but `images/`, `metadata.csv` and
    `README.md`, e.g. the prompt tables other modules build there) are carried over unchanged.
    Raises ValueError if the sample would exceed `max_bytes`.
    """
    source = load_manifest(src)
    sample = select_sample(source, seed=seed, include_research_only=include_research_only)
    check_patient_splits(sample)
    total_bytes = int(sum((source.root / f).stat().st_size for f in sample["file"]))
    if total_bytes > max_bytes:
        raise ValueError(f"sample would be {total_bytes / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit")

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        for rel in sample["file"]:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.root / rel, target)
        write_manifest(sample, staging / "metadata.csv")
        (staging / "README.md").write_text(
            render_readme(sample, total_bytes, seed, include_research_only), encoding="utf-8"
        )
        if out.exists():
            for kept in sorted(set(os.listdir(out)) - set(SAMPLE_OWNS)):
                copy = shutil.copytree if (out / kept).is_dir() else shutil.copy2
                copy(out / kept, staging / kept)
        os.chmod(staging, 0o755)
        if out.exists():
            retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_manifest(out)


def main(argv: list[str] | None = None) -> int:
    from xray_generator.paths import sample_data_dir, shared_data_dir

    parser = argparse.ArgumentParser(prog="python -m xray_generator.data.make_sample", description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=shared_data_dir(), help="curated set (default: shared/data/cxr)")
    parser.add_argument("--out", type=Path, default=sample_data_dir(), help="sample folder (default: dataset/)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--include-research-only",
        action="store_true",
        help="also take Actualmed / Figure 1 images (no explicit licence): for local use, not for redistribution",
    )
    args = parser.parse_args(argv)
    manifest = build_sample(args.src, args.out, seed=args.seed, include_research_only=args.include_research_only)
    size = sum(p.stat().st_size for p in manifest.paths())
    print(f"{len(manifest)} images ({size / 1e6:.1f} MB) in {manifest.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
