"""Training prompts: every finding named, adult normals, real report impressions matched by the vocabulary."""
from __future__ import annotations

import pandas as pd
import pytest

from xray_generator.data.prompts import (
    NORMAL_VARIANT,
    REPORT_VARIANT,
    age_group,
    finding_labels,
    matching_report_prompts,
    prompt_variants,
)
from xray_generator.data.report_prompts import load_report_prompts, read_impression
from xray_generator.vocabulary import find_findings, positive_findings


def film(**fields) -> pd.Series:
    base = {"image_id": "nih_00000001_000", "source": "nih_cxr14", "view": "PA", "sex": "M", "age": 46.0, "labels": "Normal", "report": None}
    return pd.Series({**base, **fields})


def test_old_sources_keep_their_one_specific_label():
    assert finding_labels("Pneumonia; Viral pneumonia; COVID-19") == ["COVID-19"]
    assert finding_labels("Pneumonia; Bacterial pneumonia") == ["Bacterial pneumonia"]
    assert finding_labels("Normal") == ["Normal"]
    assert finding_labels(None) == []


def test_every_nih_finding_of_a_film_is_named():
    assert finding_labels("Pneumonia; Infiltration; Pleural effusion") == ["Pneumonia", "Infiltration", "Pleural effusion"]
    prompts = prompt_variants(film(labels="Atelectasis; Pleural effusion"), 6)
    for variant in (0, 1, 2, 3, 5):
        named = set(positive_findings(prompts[variant]))
        assert named == {"Atelectasis", "Pleural effusion"}, prompts[variant]
    # Many findings stay short enough for the 64-token encoder.
    many = prompt_variants(film(labels="Pneumonia; Edema; Pleural effusion; Infiltration; Pleural thickening"), 2)
    assert all(len(p.split()) <= 25 for p in many)
    assert set(positive_findings(many[0])) == {"Pneumonia", "Edema", "Pleural effusion", "Infiltration", "Pleural thickening"}


def test_nih_ages_give_adult_elderly_and_pediatric_words():
    assert age_group(film(age=46.0))[0] == "adult"
    assert age_group(film(age=75.0))[0] == "elderly"
    assert age_group(film(age=9.0))[0] == "pediatric"
    assert age_group(film(age=pd.NA, source="covid_mhh"))[0] == "adult"
    assert age_group(film(age=pd.NA, source="pneumonia_kermany"))[0] == "pediatric"


def test_adult_normals_get_a_normal_adult_pa_prompt():
    prompt = prompt_variants(film(), 6)[NORMAL_VARIANT]
    assert prompt.startswith("Normal adult PA chest radiograph"), prompt
    assert positive_findings(prompt) == ["Normal"]


def test_prompts_are_deterministic_per_image_and_variant():
    row = film(labels="Cardiomegaly; Pleural effusion")
    assert prompt_variants(row, 6) == prompt_variants(row, 6)
    assert prompt_variants(row, 2) == prompt_variants(row, 6)[:2]
    assert prompt_variants(row, 6) != prompt_variants(film(image_id="nih_00000002_000", labels="Cardiomegaly; Pleural effusion"), 6)


def test_old_template_prompts_are_unchanged():
    # Prompts the shipped UNet trained on (computed with the builder before NIH findings were added).
    kermany = pd.Series({"image_id": "kermany_person1_virus_6", "source": "pneumonia_kermany", "view": "AP", "sex": "", "age": pd.NA,
                         "labels": "Pneumonia; Viral pneumonia", "report": None})
    before = prompt_variants(kermany, 6)
    assert all("viral" in before[v].lower() for v in (0, 1, 2, 3, 5))
    import hashlib
    import random

    from xray_generator.data.prompts import TEMPLATES
    from xray_generator.vocabulary import phrases_for
    for variant in (0, 1, 2, 3, 5):
        rng = random.Random(int.from_bytes(hashlib.sha256(f"kermany_person1_virus_6|{variant}".encode()).digest()[:8], "big"))
        finding = rng.choice(phrases_for("Viral pneumonia"))
        template = TEMPLATES[(variant + rng.randrange(len(TEMPLATES))) % len(TEMPLATES)]
        expected = template.format(age_adj="pediatric", age_adj_cap="Pediatric", age_noun="a young child", view="AP", sex="",
                                   finding=finding, finding_cap=finding[0].upper() + finding[1:])
        assert before[variant] == " ".join(expected.split())


def test_report_slot_quotes_a_real_impression_that_agrees_with_the_labels():
    table = load_report_prompts()
    assert len(table) > 300  # the shipped table
    row = film(labels="Atelectasis; Pleural effusion")
    prompt = prompt_variants(row, 6)[REPORT_VARIANT]
    impressions = matching_report_prompts("Atelectasis; Pleural effusion")
    assert impressions and any(impression in prompt for impression in impressions)
    for impression in impressions:
        asserted = set(positive_findings(impression))
        assert asserted and asserted <= {"Atelectasis", "Pleural effusion"}
        assert not {m.label for m in find_findings(impression) if m.negated} & {"Atelectasis", "Pleural effusion"}
    # The best matches name both findings, not one of them.
    assert all(set(positive_findings(i)) == {"Atelectasis", "Pleural effusion"} for i in impressions)


def test_normal_films_only_get_normal_impressions_and_findings_never_do():
    for impression in matching_report_prompts("Normal"):
        assert positive_findings(impression) in (["Normal"], []), impression
    for impression in matching_report_prompts("Pneumonia; Bacterial pneumonia"):
        assert "Normal" not in positive_findings(impression)
    assert matching_report_prompts("") == ()
    assert matching_report_prompts("COVID-19") == ()  # no IU report names COVID-19 (they predate it)


def test_an_impression_that_says_nothing_else_is_wrong_must_name_every_finding():
    # "Left basilar atelectasis. No acute cardiopulmonary abnormality." cannot caption atelectasis with pneumonia.
    for impression in matching_report_prompts("Atelectasis; Pneumonia"):
        assert positive_findings(impression) == ["Pneumonia", "Atelectasis"] or "acute" not in impression.lower(), impression


@pytest.mark.parametrize("impression, expected", [
    ("No acute cardiopulmonary abnormality.", (["Normal"], [], True)),
    ("No pneumothorax or pleural effusion.", (["Normal"], ["Pleural effusion", "Pneumothorax"], False)),
    ("Stable cardiomegaly. Clear lungs.", (["Cardiomegaly"], [], True)),
    ("Left basilar atelectasis.", (["Atelectasis"], [], False)),
    ("Stable calcified granuloma.", None),  # a sentence the vocabulary cannot vouch for
    ("Cardiomegaly. Sternotomy wires.", None),
    ("Cardiomegaly with sternotomy wires.", None),  # named beside a finding: still outside the labels
    ("Heart size is normal. Lungs are clear of pneumonia.", (["Normal"], ["Pneumonia", "Cardiomegaly"], True)),
    ("Right lower lobe opacity, possibly pneumonia.", None),  # hedged
    ("No XXXX of pleural effusion.", None),  # de-identification gap
])
def test_which_impressions_qualify(impression, expected):
    assert read_impression(impression) == expected
