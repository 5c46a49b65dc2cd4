"""Training prompts built from metadata, since no image here has a paired radiology report.

Templates vary word order, demographics and finding phrasing so the text encoder's free-text
understanding is used, rather than one fixed caption per label. Dropping the prompt (for
classifier-free guidance) happens in the trainer, not here.
"""
from __future__ import annotations

import hashlib
import random
import re

import pandas as pd

from xray_generator.data.manifest import split_labels
from xray_generator.vocabulary import phrases_for

# Most specific first: the phrase for the first label found names the finding.
FINDING_PRIORITY = ("COVID-19", "SARS", "MERS", "Tuberculosis", "Pneumocystis", "Bacterial pneumonia", "Viral pneumonia")

TEMPLATES = (
    "{age_adj} {view} chest radiograph: {finding}.",
    "{finding_cap}. {age_adj_cap} {sex}patient, {view} view.",
    "Frontal chest X-ray of {age_noun} showing {finding}.",
    "Findings: {finding}.",
    "{view} chest film, {age_adj} {sex}patient. Impression: {finding}.",
    "Chest radiograph of {age_noun}. {finding_cap}.",
)
NOTE_TEMPLATE = "{age_adj_cap} {view} chest radiograph. {finding_cap}. History: {note}"


def _rng_for(image_id: str, variant: int) -> random.Random:
    seed = int.from_bytes(hashlib.sha256(f"{image_id}|{variant}".encode()).digest()[:8], "big")
    return random.Random(seed)


def age_group(row: pd.Series) -> tuple[str, str]:
    """(adjective, noun phrase) for the patient's age group."""
    age = row.get("age")
    if str(row.get("source")) == "pneumonia_kermany":
        return "pediatric", "a young child"
    if age is not None and not pd.isna(age):
        if age < 18:
            return "pediatric", "a child"
        if age >= 70:
            return "elderly", "an elderly adult"
    return "adult", "an adult"


def finding_labels(labels: str | None) -> list[str]:
    found = split_labels(labels)
    for label in FINDING_PRIORITY:
        if label in found:
            return [label]
    organisms = [l for l in found if l not in ("Pneumonia", "Normal")]
    if organisms:
        return organisms[:1]
    return found[:1]


def note_excerpt(report: str | None, max_words: int = 30) -> str | None:
    if report is None or pd.isna(report) or not str(report).strip():
        return None
    sentence = re.split(r"(?<=[.!?])\s", str(report).strip())[0]
    words = sentence.split()
    return " ".join(words[:max_words]).rstrip(".") + "."


def prompt_variants(row: pd.Series, count: int = 6) -> list[str]:
    """`count` deterministic prompt variants for one manifest row."""
    age_adj, age_noun = age_group(row)
    view = {"PA": "PA", "AP": "AP"}.get(str(row.get("view")), "frontal")
    sex = {"M": "male ", "F": "female "}.get(str(row.get("sex")), "")
    labels = finding_labels(row.get("labels"))
    note = note_excerpt(row.get("report"))
    prompts = []
    for variant in range(count):
        rng = _rng_for(str(row["image_id"]), variant)
        finding = rng.choice(phrases_for(labels[0])) if labels else "chest radiograph, findings not recorded"
        use_note = note is not None and variant % 3 == 2
        template = NOTE_TEMPLATE if use_note else TEMPLATES[(variant + rng.randrange(len(TEMPLATES))) % len(TEMPLATES)]
        text = template.format(
            age_adj=age_adj, age_adj_cap=age_adj.capitalize(), age_noun=age_noun, view=view, sex=sex,
            finding=finding, finding_cap=finding[0].upper() + finding[1:], note=note,
        )
        prompts.append(re.sub(r"\s+", " ", text).strip())
    return prompts
