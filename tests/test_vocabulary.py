"""Reading findings out of report-style text: synonyms, negation over lists, hedges, and what "normal" means."""
from __future__ import annotations

import pytest

from xray_generator.vocabulary import KNOWN_LABELS, SYNONYMS, THORACIC_FINDINGS, find_findings, positive_findings


def read(text: str) -> list[tuple[str, bool]]:
    return [(m.label, m.negated) for m in find_findings(text)]


@pytest.mark.parametrize("text, expected", [
    ("Small left pleural effusion.", [("Pleural effusion", False)]),
    ("Bilateral effusions.", [("Pleural effusion", False)]),
    ("Layering pleural fluid on the right.", [("Pleural effusion", False)]),
    ("Enlarged heart.", [("Cardiomegaly", False)]),
    ("The heart is mildly enlarged.", [("Cardiomegaly", False)]),
    ("Enlarged cardiac silhouette.", [("Cardiomegaly", False)]),
    ("Collapse of the right upper lobe.", [("Atelectasis", False)]),
    ("Left basilar subsegmental atelectasis.", [("Atelectasis", False)]),
    ("Bilateral infiltrates.", [("Infiltration", False)]),
    ("Right lower lobe airspace disease.", [("Consolidation", False)]),
    ("Focal opacity in the right lung base.", [("Consolidation", False)]),
    ("Pulmonary oedema.", [("Edema", False)]),
    ("Central vascular congestion.", [("Edema", False)]),
    ("Nodular opacity in the left upper lobe.", [("Nodule", False)]),
    ("Right hilar mass.", [("Mass", False)]),
    ("Hyperinflated lungs.", [("Emphysema", False)]),
    ("Changes of COPD.", [("Emphysema", False)]),
    ("Apical scarring.", [("Fibrosis", False)]),
    ("Large hiatal hernia.", [("Hernia", False)]),
    ("Small right apical pneumothorax.", [("Pneumothorax", False)]),
    ("Biapical pleural thickening.", [("Pleural thickening", False)]),
    ("Right middle lobe pneumonia.", [("Pneumonia", False)]),
    ("Findings consistent with coronavirus disease.", [("COVID-19", False)]),
    ("SARS-CoV-2 positive, bilateral opacities.", [("COVID-19", False), ("Consolidation", False)]),
    ("Viral pneumonia.", [("Viral pneumonia", False)]),  # the most specific label, not also "Pneumonia"
])
def test_radiologist_synonyms_name_the_vocabulary_label(text, expected):
    assert read(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax.", [("Pneumothorax", True)]),
    ("Without effusion.", [("Pleural effusion", True)]),
    ("Negative for pneumothorax.", [("Pneumothorax", True)]),
    ("No evidence of pneumonia.", [("Pneumonia", True)]),
    ("A pneumothorax is not seen.", [("Pneumothorax", True)]),
    ("Pleural effusion is not identified.", [("Pleural effusion", True)]),
    ("Previously seen right lower lobe pneumonia has resolved.", [("Pneumonia", True)]),
    ("Interval resolution of the left effusion.", [("Pleural effusion", True)]),
    ("The heart is not enlarged.", [("Cardiomegaly", True)]),
    ("No focal consolidation, effusion or pneumothorax.",
     [("Consolidation", True), ("Pleural effusion", True), ("Pneumothorax", True)]),
    ("There is no pneumothorax, pleural effusion, or focal airspace disease.",
     [("Pneumothorax", True), ("Pleural effusion", True), ("Consolidation", True)]),
    ("No pulmonary edema, infiltrate or nodule.", [("Edema", True), ("Infiltration", True), ("Nodule", True)]),
    # The negation ends with its clause or sentence.
    ("No pneumothorax. Small left effusion.", [("Pneumothorax", True), ("Pleural effusion", False)]),
    ("No pneumothorax; small left effusion.", [("Pneumothorax", True), ("Pleural effusion", False)]),
    ("No pneumothorax but a small left effusion.", [("Pneumothorax", True), ("Pleural effusion", False)]),
    ("Cardiomegaly without pleural effusion.", [("Cardiomegaly", False), ("Pleural effusion", True)]),
    ("Moderate cardiomegaly with small bilateral pleural effusions. No pneumothorax.",
     [("Cardiomegaly", False), ("Pleural effusion", False), ("Pneumothorax", True)]),
    # Pseudo-negations: the finding is there.
    ("No interval change in the cardiomegaly.", [("Cardiomegaly", False)]),
    ("Atelectasis, without significant change.", [("Atelectasis", False)]),
])
def test_negation_as_reports_write_it(text, expected):
    assert read(text) == expected


@pytest.mark.parametrize("text, positives", [
    ("No acute cardiopulmonary abnormality.", ["Normal"]),
    ("1. No acute radiographic cardiopulmonary process.", ["Normal"]),
    ("Normal chest.", ["Normal"]),
    ("Normal.", ["Normal"]),
    ("Clear lungs.", ["Normal"]),
    ("Normal heart size.", []),  # a statement about the heart, not a normal film
    ("Heart size is normal.", []),
    ("The heart size and mediastinal contours are within normal limits.", []),
    ("Normal heart size. Lungs clear.", ["Normal"]),
    ("Stable cardiomegaly. No acute cardiopulmonary disease.", ["Cardiomegaly"]),  # Normal yields to a finding
    ("Left lower lobe atelectasis otherwise no acute cardiopulmonary abnormality.", ["Atelectasis"]),
])
def test_normal_is_a_whole_study_statement(text, positives):
    assert positive_findings(text) == positives


def test_normal_heart_size_negates_cardiomegaly_and_is_not_normal():
    mentions = find_findings("Normal heart size.")
    assert [(m.label, m.negated) for m in mentions] == [("Cardiomegaly", True)]


@pytest.mark.parametrize("text", [
    "Right lower lobe opacity, possibly pneumonia.",
    "Atelectasis versus scarring at the left base.",
    "Pneumonia cannot be excluded.",
    "Bilateral effusions and/or atelectasis.",
])
def test_hedged_findings_are_marked_uncertain(text):
    assert any(m.uncertain for m in find_findings(text))


def test_look_alikes_are_not_findings():
    assert read("Subcutaneous emphysema. Small pericardial effusion. Nasal congestion.") == []
    assert read("Stable calcified granuloma.") == []


def test_mention_spans_point_into_the_original_text():
    text = "Findings: No focal CONSOLIDATION. Right Pleural Effusion."
    for mention in find_findings(text):
        assert text[mention.start : mention.end] == mention.text
    assert [m.text for m in find_findings(text)] == ["CONSOLIDATION", "Pleural Effusion"]


def test_every_label_is_readable_from_its_own_name_and_phrases():
    from xray_generator.vocabulary import phrases_for

    for label in ("Normal", "Pneumonia", "COVID-19", "Tuberculosis", *THORACIC_FINDINGS):
        assert label in SYNONYMS
        assert label in {m.label for m in find_findings(phrases_for(label)[0])}, label
    assert set(SYNONYMS) <= set(KNOWN_LABELS)


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="expected text"):
        find_findings(None)  # type: ignore[arg-type]
