"""The manifest: the shipped sample loads and validates, queries filter, broken manifests are refused."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from xray_generator.data.manifest import (
    MANIFEST_COLUMNS,
    REQUIRED_NON_EMPTY,
    ManifestError,
    load_manifest,
    sampling_weights,
    split_labels,
    validate_table,
    write_manifest,
)
from xray_generator.data.importers import NIH_LABELS
from xray_generator.paths import shared_data_dir
from xray_generator.vocabulary import KNOWN_LABELS

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "dataset"


@pytest.fixture(scope="module")
def sample():
    return load_manifest(SAMPLE_DIR)


def _raw(sample) -> pd.DataFrame:
    return pd.read_csv(SAMPLE_DIR / "metadata.csv", dtype=str, keep_default_na=False)


def test_sample_loads_with_schema_and_files(sample):
    assert list(sample.table.columns) == list(MANIFEST_COLUMNS)
    assert 250 <= len(sample) <= 350
    assert all(path.is_file() for path in sample.paths())
    assert sample.table["image_id"].is_unique


def test_sample_covers_splits_sources_and_resolutions(sample):
    table = sample.table
    assert set(table["split"]) == {"train", "val", "test"}
    assert {"pneumonia_kermany", "covid_ieee8023", "nih_cxr14", "covid_mhh"} <= set(table["source"])
    assert set(table["native_px"]) == {224, 256}
    for label in ("Normal", "Bacterial pneumonia", "Viral pneumonia", "COVID-19"):
        assert len(sample.query(label=label)) >= 10, label
        assert len(sample.query(label=label, split="test")) >= 1, label


def test_sample_holds_nih_and_mhh_films_with_their_licences(sample):
    from xray_generator.data.importers import NIH

    nih, mhh = sample.query(source="nih_cxr14").table, sample.query(source="covid_mhh").table
    assert len(nih) >= 10 and len(mhh) >= 3
    assert set(nih["license"]) == {NIH.license}
    assert set(mhh["license"]) == {"CC BY 3.0 (ml-workgroup/covid-19-image-repository; attribute doi:10.6084/m9.figshare.12275009)"}
    nih_labels = {label for value in nih["labels"] for label in split_labels(value)}
    assert {"Normal", "Cardiomegaly", "Pleural effusion", "Atelectasis"} <= nih_labels
    adult_normals = sample.query(source="nih_cxr14", label="Normal", min_age=18)
    assert len(adult_normals) >= 2
    assert set(nih["split"]) == {"train", "val", "test"} and set(mhh["split"]) == {"train", "val", "test"}
    assert set(mhh["labels"]) == {"COVID-19"}


def test_sample_has_only_redistributable_licences(sample):
    licences = sample.table["license"]
    assert not licences.str.contains("NC-ND").any()
    assert not licences.str.startswith("unspecified").any()
    assert not licences.str.contains("no explicit licence").any()
    assert licences.notna().all() and sample.table["source"].notna().all()


def test_sample_labels_are_in_the_vocabulary(sample):
    labels = {label for value in sample.table["labels"] for label in split_labels(value)}
    assert labels <= set(KNOWN_LABELS)


def test_sample_folder_is_small():
    total = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert total < 15 * 1024 * 1024


def test_path_of_resolves_relative_to_the_manifest(sample):
    image_id = sample.table["image_id"].iloc[0]
    assert sample.path_of(image_id) == SAMPLE_DIR / sample.table["file"].iloc[0]
    with pytest.raises(KeyError):
        sample.path_of("no_such_image")


def test_query_label_matches_any_listed_label(sample):
    covid = sample.query(label="COVID-19")
    assert len(covid) > 0
    assert all("COVID-19" in split_labels(v) for v in covid.table["labels"])
    normal_or_covid = sample.query(label=["Normal", "COVID-19"])
    assert len(normal_or_covid) == len(covid) + len(sample.query(label="Normal"))


def test_query_combines_filters(sample):
    rows = sample.query(source="pneumonia_kermany", split="test", native_px=224)
    assert len(rows) > 0
    assert set(rows.table["source"]) == {"pneumonia_kermany"}
    assert set(rows.table["split"]) == {"test"}
    assert set(rows.table["native_px"]) == {224}
    assert rows.root == sample.root


def test_query_sex_view_and_age_range(sample):
    women = sample.query(sex="F", min_age=40, max_age=60)
    assert len(women) > 0
    assert set(women.table["sex"]) == {"F"}
    assert women.table["age"].between(40, 60).all()
    # rows without an age never match an age filter
    assert len(sample.query(min_age=0)) == int(sample.table["age"].notna().sum())
    assert set(sample.query(view=["PA"]).table["view"]) == {"PA"}


def test_label_counts_count_each_label_of_multi_label_rows(sample):
    counts = sample.label_counts()
    assert counts["Pneumonia"] >= counts["Viral pneumonia"] + counts["Bacterial pneumonia"]


def test_write_manifest_round_trips_byte_for_byte(sample, tmp_path):
    written = write_manifest(sample, tmp_path)
    assert written == tmp_path / "metadata.csv"
    assert written.read_bytes() == (SAMPLE_DIR / "metadata.csv").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.csv"]  # no temp file left behind


# --- broken manifests ---------------------------------------------------------------------


def _write(tmp_path: Path, table: pd.DataFrame) -> Path:
    path = tmp_path / "metadata.csv"
    table.to_csv(path, index=False)
    return path


def test_missing_column_is_refused(sample, tmp_path):
    broken = _raw(sample).drop(columns=["license"])
    with pytest.raises(ManifestError, match="missing columns: license"):
        load_manifest(_write(tmp_path, broken))


@pytest.mark.parametrize("column", REQUIRED_NON_EMPTY)
def test_empty_required_field_is_refused(sample, tmp_path, column):
    broken = _raw(sample)
    broken.loc[3, column] = ""
    with pytest.raises(ManifestError, match=f"column '{column}' is empty on CSV line\\(s\\) 5"):
        load_manifest(_write(tmp_path, broken))


def test_patient_in_two_splits_is_refused(sample, tmp_path):
    broken = _raw(sample)
    first, second = broken.index[broken["split"] == "train"][0], broken.index[broken["split"] == "test"][0]
    broken.loc[second, ["source", "patient_id"]] = broken.loc[first, ["source", "patient_id"]].to_numpy()
    with pytest.raises(ManifestError, match="more than one split"):
        load_manifest(_write(tmp_path, broken))


def test_bad_split_value_is_refused(sample, tmp_path):
    broken = _raw(sample)
    broken.loc[0, "split"] = "validation"
    with pytest.raises(ManifestError, match="'validation' is not one of"):
        load_manifest(_write(tmp_path, broken))


def test_duplicate_image_id_is_refused(sample):
    broken = _raw(sample)
    broken.loc[1, "image_id"] = broken.loc[0, "image_id"]
    with pytest.raises(ManifestError, match="duplicate image_id"):
        validate_table(broken.replace({"": pd.NA}))


def test_wrong_type_is_refused(sample):
    broken = _raw(sample).replace({"": pd.NA})
    broken.loc[0, "native_px"] = "big"
    with pytest.raises(ManifestError, match="wrong type"):
        validate_table(broken)


def test_write_manifest_refuses_an_invalid_table(sample, tmp_path):
    broken = sample.table.copy()
    broken.loc[0, "split"] = "holdout"
    with pytest.raises(ManifestError):
        write_manifest(broken, tmp_path / "metadata.csv")
    assert not any(tmp_path.iterdir())


def test_missing_manifest_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path)


# --- the sample builder ---------------------------------------------------------------------


def test_sample_builder_filters_licences():
    from xray_generator.data.make_sample import redistributable

    table = pd.DataFrame(
        {
            "license": [
                "CC BY 4.0",
                "CC BY-NC-SA",
                "CC BY-NC-ND 4.0",
                "unspecified (see ieee8023/covid-chestxray-dataset)",
                "research use only (as stated in the repository README; no explicit licence)",
            ]
        }
    )
    assert redistributable(table).tolist() == [True, True, False, False, False]
    assert redistributable(table, include_research_only=True).tolist() == [True, True, False, False, True]


def test_sample_builder_is_deterministic_and_reproduces_the_shipped_rows(tmp_path):
    from xray_generator.data.make_sample import build_sample

    # every stratum of the sample is within its quota, so rebuilding from the sample keeps all of it
    rebuilt = build_sample(SAMPLE_DIR, tmp_path / "sample")
    assert (tmp_path / "sample" / "metadata.csv").read_bytes() == (SAMPLE_DIR / "metadata.csv").read_bytes()
    assert (tmp_path / "sample" / "README.md").is_file()
    assert all(path.is_file() for path in rebuilt.paths())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # staging folders cleaned up


def test_small_strata_keep_a_training_share():
    from xray_generator.data.make_sample import split_quota

    # the quotas of the first sample (all 6 or more) keep their 2 test + 2 val images
    assert split_quota(6) == {"test": 2, "val": 2, "train": 2}
    assert split_quota(30) == {"test": 4, "val": 4, "train": 22}
    assert split_quota(4) == {"test": 1, "val": 1, "train": 2}
    assert split_quota(2) == {"test": 1, "val": 0, "train": 1}
    assert split_quota(1) == {"test": 0, "val": 0, "train": 1}


def test_sample_rebuild_keeps_files_it_does_not_own(tmp_path):
    from xray_generator.data.make_sample import build_sample

    out = tmp_path / "sample"
    out.mkdir()
    (out / "prompt_library.csv").write_text("kept\n")
    (out / "metadata.csv").write_text("replaced\n")
    build_sample(SAMPLE_DIR, out)
    assert (out / "prompt_library.csv").read_text() == "kept\n"
    assert (out / "metadata.csv").read_bytes() == (SAMPLE_DIR / "metadata.csv").read_bytes()


# --- the full curated set (../shared/data/cxr) ---------------------------------------------------

FULL_SET = shared_data_dir() / "metadata.csv"
needs_full_set = pytest.mark.needs(FULL_SET, "The full curated set belongs in ../shared/data/cxr beside the repo (or set CXR_DATA_DIR)")


@pytest.fixture(scope="module")
def full_set():
    return load_manifest(FULL_SET)


@needs_full_set
def test_full_set_loads_with_every_label_in_the_vocabulary(full_set):
    labels = {label for value in full_set.table["labels"] for label in split_labels(value)}
    assert labels <= set(KNOWN_LABELS), sorted(labels - set(KNOWN_LABELS))
    counts = full_set.table["source"].value_counts()
    assert counts["nih_cxr14"] == 999 and counts["covid_mhh"] == 49  # DATASET_CARD.md
    nih = full_set.query(source="nih_cxr14")
    # NIH's 14 findings, Pneumonia and Normal, each under its vocabulary name
    assert set(nih.label_counts().index) == set(NIH_LABELS.values())


@needs_full_set
def test_full_set_nih_and_mhh_rows_match_their_importer_and_licences(full_set):
    from xray_generator.data.importers import NIH
    from xray_generator.data.splits import assign_splits

    nih = full_set.query(source="nih_cxr14").table
    assert NIH.source == "nih_cxr14" and set(nih["license"]) == {NIH.license}
    # an NIH download imported with import_nih puts each patient in the curated set's split
    assert (assign_splits(nih) == nih["split"]).all()
    mhh = full_set.query(source="covid_mhh").table
    assert set(mhh["license"]) == {"CC BY 3.0 (ml-workgroup/covid-19-image-repository; attribute doi:10.6084/m9.figshare.12275009)"}
    assert (assign_splits(mhh) == mhh["split"]).all()


@needs_full_set
def test_shipped_sample_is_what_make_sample_selects_from_the_full_set(full_set):
    from xray_generator.data.make_sample import select_sample

    sample = select_sample(full_set)
    shipped = pd.read_csv(SAMPLE_DIR / "metadata.csv", dtype=str, keep_default_na=False)
    assert sample["image_id"].tolist() == shipped["image_id"].tolist()


def test_sampling_weights_take_each_images_largest_label_weight_and_refuse_unknown_labels():
    labels = pd.Series(["Normal", "Pneumonia; Viral pneumonia", "Pneumonia; Viral pneumonia; COVID-19", "Pneumonia; Bacterial pneumonia", None])
    weights = sampling_weights(labels, {"Viral pneumonia": 2.0, "COVID-19": 3.0})
    assert weights.tolist() == [1.0, 2.0, 3.0, 1.0, 1.0]
    assert sampling_weights(labels, {}).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="Viral pneumonai"):
        sampling_weights(labels, {"Viral pneumonai": 2.0})
    with pytest.raises(ValueError, match="positive"):
        sampling_weights(labels, {"Normal": 0})
