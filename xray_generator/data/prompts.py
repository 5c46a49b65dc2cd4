"""Training prompts built from metadata, since no image here has a paired radiology report.

Templates vary word order, demographics and finding phrasing so the text encoder's free-text
understanding is used, rather than one fixed caption per label. Dropping the prompt (for
classifier-free guidance) happens in the trainer, not here.

Variant slots (per image, deterministic per (image_id, variant)):

- 0, 1: templates naming every finding of the film (evaluation prompts use these two);
- 2, 5: the film's clinical note, when it has one; otherwise templates;
- 3: Normal films get a "normal <age> <view> chest radiograph" prompt (adult normals
  from NIH teach "adult" without "COVID-19"); other films get templates;
- 4: a real report impression (IU, another patient's) that says what the film's labels
  say, when one matches (`matching_report_prompts`); otherwise templates.

Films of the sources the first UNet was trained on, which carry one finding phrase, get exactly
the template prompts they had before; only slots 3 (Normal films) and 4 (films with a matching
impression) changed for them.
"""
from __future__ import annotations

import hashlib
import random
import re
from functools import lru_cache

import pandas as pd

from xray_generator.data.manifest import split_labels
from xray_generator.data.report_prompts import load_report_prompts
from xray_generator.vocabulary import LABELS, THORACIC_FINDINGS, phrases_for

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
NORMAL_TEMPLATES = (
    "Normal {age_adj} {view} chest radiograph.",
    "Normal {age_adj} {view} chest radiograph, {finding}.",
    "{age_adj_cap} {view} chest X-ray, normal study: {finding}.",
)
# A report impression alone (as a user would paste it), or after who and how the film was taken.
REPORT_TEMPLATES = ("{report}", "{age_adj_cap} {view} chest radiograph. {report}")
NOTE_VARIANTS = (2, 5)
NORMAL_VARIANT = 3
REPORT_VARIANT = 4
# With three findings or more the short phrase of each keeps the prompt inside the encoder's 64 tokens.
SHORT_PHRASES_FROM = 3


def _rng_for(image_id: str, variant: int) -> random.Random:
    seed = int.from_bytes(hashlib.sha256(f"{image_id}|{variant}".encode()).digest()[:8], "big")
    return random.Random(seed)


def age_group(row: pd.Series) -> tuple[str, str]:
    """(adjective, noun phrase) for the patient's age group; unknown ages read as adult, except Kermany (children 1-5)."""
    age = row.get("age")
    if str(row.get("source")) == "pneumonia_kermany":
        return "pediatric", "a young child"
    if age is not None and not pd.isna(age):
        if age < 18:
            return "pediatric", "a child"
        if age >= 70:
            return "elderly", "an elderly adult"
    return "adult", "an adult"


def _primary_label(found: list[str]) -> list[str]:
    """The one label that named a film of the curated COVID/pneumonia sources (unchanged rule)."""
    for label in FINDING_PRIORITY:
        if label in found:
            return [label]
    organisms = [l for l in found if l not in ("Pneumonia", "Normal")]
    if organisms:
        return organisms[:1]
    return found[:1]


def finding_labels(labels: str | None) -> list[str]:
    """The labels a prompt names: the most specific pneumonia/COVID/Normal label, then every thoracic finding.

    'Pneumonia; Viral pneumonia; COVID-19' -> ['COVID-19'] (as before);
    'Pneumonia; Infiltration; Pleural effusion' -> ['Pneumonia', 'Infiltration', 'Pleural effusion'].
    """
    found = split_labels(labels)
    primary = _primary_label([l for l in found if l not in THORACIC_FINDINGS])
    return primary + [l for l in found if l in THORACIC_FINDINGS]


def join_phrases(phrases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def note_excerpt(report: str | None, max_words: int = 30) -> str | None:
    if report is None or pd.isna(report) or not str(report).strip():
        return None
    sentence = re.split(r"(?<=[.!?])\s", str(report).strip())[0]
    words = sentence.split()
    return " ".join(words[:max_words]).rstrip(".") + "."


@lru_cache(maxsize=None)
def matching_report_prompts(labels: str | None) -> tuple[str, ...]:
    """Report impressions (from `report_prompts`) that a film with these manifest labels may be captioned with.

    An impression matches when (1) everything it asserts is among the film's labels, (2) it negates
    none of them, (3) it asserts "Normal" exactly when the film is Normal, and (4) if it says nothing
    else is wrong ("..., otherwise no acute disease"), it names every finding of the film. Of the matches, those
    naming the most of the film's findings are kept, so a film with effusion and atelectasis gets
    "Small left pleural effusion with left basilar atelectasis." rather than a report naming one.
    """
    film = set(split_labels(labels))
    if not film:
        return ()
    table = load_report_prompts()
    best, chosen = 0, []
    for impression, findings, negated, exhaustive in zip(table["impression"], table["findings"], table["negated"], table["exhaustive"]):
        asserted = set(split_labels(findings))
        if not asserted or not asserted <= film or set(split_labels(negated)) & film:
            continue
        if exhaustive and _unnamed_findings(film, asserted):
            continue
        if ("Normal" in asserted) != ("Normal" in film):
            continue
        if len(asserted) > best:
            best, chosen = len(asserted), []
        if len(asserted) == best:
            chosen.append(impression)
    return tuple(chosen)


def _unnamed_findings(film: set[str], asserted: set[str]) -> set[str]:
    """Film labels an impression does not name; a kind of pneumonia (or an organism) names its parent labels too."""
    missing = film - asserted
    if asserted & (set(LABELS) - {"Normal", "Pneumonia"}):
        missing -= {"Pneumonia", "Viral pneumonia", "Bacterial pneumonia"}
    return missing


def prompt_variants(row: pd.Series, count: int = 6) -> list[str]:
    """`count` deterministic prompt variants for one manifest row (see the module docstring for the slots)."""
    age_adj, age_noun = age_group(row)
    view = {"PA": "PA", "AP": "AP"}.get(str(row.get("view")), "frontal")
    sex = {"M": "male ", "F": "female "}.get(str(row.get("sex")), "")
    labels = finding_labels(row.get("labels"))
    note = note_excerpt(row.get("report"))
    reports = matching_report_prompts(row.get("labels") if not pd.isna(row.get("labels")) else None)
    prompts = []
    for variant in range(count):
        rng = _rng_for(str(row["image_id"]), variant)
        # The first phrase is drawn before the template, in the order the first UNet's prompts were drawn.
        finding = rng.choice(phrases_for(labels[0])) if labels else "chest radiograph, findings not recorded"
        use_note = note is not None and variant in NOTE_VARIANTS
        template = NOTE_TEMPLATE if use_note else TEMPLATES[(variant + rng.randrange(len(TEMPLATES))) % len(TEMPLATES)]
        if len(labels) > 1:
            short = len(labels) >= SHORT_PHRASES_FROM
            first = phrases_for(labels[0])[0] if short else finding
            finding = join_phrases([first] + [phrases_for(l)[0] if short else rng.choice(phrases_for(l)) for l in labels[1:]])
        report = None
        if variant == REPORT_VARIANT and reports:
            report = rng.choice(reports)
            template = rng.choice(REPORT_TEMPLATES)
        elif variant == NORMAL_VARIANT and labels == ["Normal"] and not use_note:
            # "Normal ... radiograph, normal chest radiograph." would say it twice.
            template = NORMAL_TEMPLATES[0] if finding.startswith("normal") else rng.choice(NORMAL_TEMPLATES)
        text = template.format(
            age_adj=age_adj, age_adj_cap=age_adj.capitalize(), age_noun=age_noun, view=view, sex=sex,
            finding=finding, finding_cap=finding[0].upper() + finding[1:], note=note, report=report,
        )
        prompts.append(re.sub(r"\s+", " ", text).strip())
    return prompts
