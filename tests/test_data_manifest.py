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
    split_labels,
    validate_table,
    write_manifest,
)
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
    assert {"pneumonia_kermany", "covid_ieee8023"} <= set(table["source"])
    assert set(table["native_px"]) == {224, 256}
    for label in ("Normal", "Bacterial pneumonia", "Viral pneumonia", "COVID-19"):
        assert len(sample.query(label=label)) >= 10, label
        assert len(sample.query(label=label, split="test")) >= 1, label


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
