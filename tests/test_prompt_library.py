"""The shipped example prompts: real IU report text, verbatim, without de-identification gaps, with provenance."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from xray_generator.data.prompt_library import (
    LICENSE,
    PROMPT_COLUMNS,
    build_prompt_library,
    candidate_prompt,
    default_prompt_library_path,
    load_prompt_library,
)
from xray_generator.paths import iu_reports_dir

REPORTS = iu_reports_dir() / "indiana_reports.csv"
needs_reports = pytest.mark.needs(REPORTS, "The IU reports belong in ../shared/data/iu_reports beside the repo (or set CXR_IU_REPORTS_DIR)")


@pytest.fixture(scope="module")
def library() -> pd.DataFrame:
    return load_prompt_library()


def test_shipped_library_has_about_200_prompts_with_provenance(library):
    assert default_prompt_library_path().is_file()
    assert list(library.columns) == list(PROMPT_COLUMNS)
    assert 180 <= len(library) <= 220
    assert library["uid"].is_unique and library["prompt"].str.lower().is_unique
    assert LICENSE == "not stated" and (library["license"] == LICENSE).all()
    assert library["source"].str.contains("Indiana University").all()


def test_no_prompt_has_a_deidentification_gap_or_is_trivially_short(library):
    assert not library["prompt"].str.contains("XXXX").any()
    assert (library["prompt"].str.split().str.len() >= 3).all()


def test_library_spans_many_findings_not_only_normal(library):
    first_problem = library["problems"].str.split(";").str[0]
    assert first_problem.nunique() >= 40
    assert (first_problem == "normal").mean() <= 0.2


@needs_reports
def test_prompts_are_verbatim_text_of_their_report(library):
    reports = pd.read_csv(REPORTS, dtype=str, keep_default_na=False).set_index("uid")

    def words(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip()

    for row in library.itertuples(index=False):
        report = reports.loc[str(row.uid)]
        source = words(report["findings"]) + " Impression: " + words(report["impression"])
        for part in row.prompt.split(" Impression: "):
            assert part in source, f"uid {row.uid}: prompt is not verbatim report text"


@needs_reports
def test_rebuilding_gives_the_shipped_file(library):
    rebuilt = build_prompt_library(REPORTS)
    assert rebuilt.astype(str).equals(library.astype(str))


def test_masked_reports_are_skipped_not_repaired():
    assert candidate_prompt("There are no XXXX of effusion.", "Normal chest x-XXXX.") is None
    section, prompt = candidate_prompt("There are no XXXX of effusion.", "No acute cardiopulmonary abnormality.")
    assert (section, prompt) == ("impression", "No acute cardiopulmonary abnormality.")
    assert candidate_prompt("", "") is None
