"""The label vocabulary: the one place that names findings and how to say them in radiology language."""
from __future__ import annotations

import re
from dataclasses import dataclass

# Labels as normalised in metadata.csv, most common first.
LABELS: tuple[str, ...] = (
    "Normal",
    "Pneumonia",
    "Bacterial pneumonia",
    "Viral pneumonia",
    "COVID-19",
    "Fungal pneumonia",
    "Pneumocystis",
    "SARS",
    "Streptococcus",
    "MERS",
    "Tuberculosis",
    "Klebsiella",
    "Legionella",
    "Lipoid pneumonia",
    "Mycoplasma",
    "Varicella",
    "E. coli",
    "Influenza",
    "Nocardia",
    "Herpes",
    "Aspergillosis",
    "Aspiration pneumonia",
    "Staphylococcus",
)

# Phrases a radiologist might write for each finding. Several per label so that the
# text encoder learns the concept rather than one string.
FINDING_PHRASES: dict[str, tuple[str, ...]] = {
    "Normal": (
        "no acute cardiopulmonary abnormality",
        "clear lungs, normal heart size",
        "normal chest radiograph",
        "lungs are clear without focal consolidation, effusion or pneumothorax",
        "no active disease",
    ),
    "Pneumonia": (
        "pneumonia",
        "airspace opacity consistent with pneumonia",
        "focal consolidation suspicious for pneumonia",
        "patchy infiltrates in keeping with pneumonia",
    ),
    "Bacterial pneumonia": (
        "bacterial pneumonia",
        "lobar consolidation consistent with bacterial pneumonia",
        "dense focal consolidation, likely bacterial",
    ),
    "Viral pneumonia": (
        "viral pneumonia",
        "diffuse interstitial opacities consistent with viral pneumonia",
        "bilateral peribronchial thickening suggesting viral infection",
    ),
    "COVID-19": (
        "COVID-19 pneumonia",
        "bilateral peripheral ground-glass opacities consistent with COVID-19",
        "multifocal patchy opacities, COVID-19",
    ),
    "Tuberculosis": ("tuberculosis", "upper lobe cavitary opacity suggesting tuberculosis"),
    "Pneumocystis": ("pneumocystis pneumonia", "diffuse bilateral interstitial opacities, pneumocystis"),
}


def phrases_for(label: str) -> tuple[str, ...]:
    """Radiology phrases for a label; unlisted organisms read as '<label> pneumonia'."""
    if label in FINDING_PHRASES:
        return FINDING_PHRASES[label]
    text = label if "pneumonia" in label.lower() else f"{label} pneumonia"
    return (text,)


# Thoracic findings of the NIH ChestX-ray14 and Indiana University (Open-i) label sets that the
# curated set does not use. Importers map those sources into these names; `LABELS` stays as it is
# because models index it.
THORACIC_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural thickening",
    "Pneumothorax",
)

# Every label a manifest may carry: the curated set's labels, then the imported findings.
KNOWN_LABELS: tuple[str, ...] = LABELS + THORACIC_FINDINGS

FINDING_PHRASES.update(
    {
        "Atelectasis": ("atelectasis", "linear basilar opacity consistent with subsegmental atelectasis"),
        "Cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "the heart is enlarged"),
        "Consolidation": ("consolidation", "focal airspace consolidation"),
        "Edema": ("pulmonary edema", "interstitial edema with vascular congestion"),
        "Pleural effusion": ("pleural effusion", "blunting of the costophrenic angle consistent with pleural effusion"),
        "Emphysema": ("emphysema", "hyperinflated lungs with flattened diaphragms, emphysema"),
        "Fibrosis": ("pulmonary fibrosis", "reticular opacities consistent with fibrosis"),
        "Hernia": ("hiatal hernia", "retrocardiac air-fluid level consistent with hiatal hernia"),
        "Infiltration": ("pulmonary infiltrate", "patchy infiltrate"),
        "Mass": ("lung mass", "rounded mass in the lung"),
        "Nodule": ("pulmonary nodule", "small nodular opacity in the lung"),
        "Pleural thickening": ("pleural thickening", "apical pleural thickening"),
        "Pneumothorax": ("pneumothorax", "visible pleural line with absent lung markings, pneumothorax"),
    }
)


# ---------------------------------------------------------------------------------------------
# Reading findings out of free text (report sentences, user prompts)
#
# Synonyms are regular expressions over lower-case text, matched on word boundaries. Where two
# synonyms overlap, the longest match wins ("viral pneumonia" over "pneumonia", "pleural scarring"
# over "scarring"), so a mention names the most specific label. Negation follows NegEx (Chapman
# et al. 2001) in its simplest form: a negation cue ("no", "without", "negative for", ...) negates
# every finding after it up to the end of its clause, which is how reports negate lists ("no focal
# consolidation, effusion or pneumothorax"); a trailing cue ("... is not seen", "... has resolved")
# negates the findings before it in its clause.

SYNONYMS: dict[str, tuple[str, ...]] = {
    # "Normal" is a statement about the whole study. "normal" alone is not: "normal heart size"
    # says nothing about the lungs, so bare "normal" counts only as a whole sentence or before
    # chest/study/exam/radiograph.
    "Normal": (
        r"no acute (?:or active )?(?:(?:radiographic|cardiopulmonary|cardiac|pulmonary|intrathoracic|chest|thoracic|"
        r"cardiac, pulmonary or pleural|osseous or cardiopulmonary)[ ,]*)*(?:abnormalit(?:y|ies)|disease|process(?:es)?|findings?|"
        r"pathology|changes?|abnormal findings)",
        r"no (?:evidence of )?active (?:cardiopulmonary |pulmonary )?disease",
        r"negative for acute (?:cardiopulmonary )?(?:abnormalit(?:y|ies)|disease|process|findings?)",
        r"normal (?:chest|study|exam(?:ination)?|radiograph|chest (?:x-?ray|radiograph|film|study))",
        r"(?:chest|study|exam(?:ination)?) (?:is |appears )?(?:normal|unremarkable|negative)",
        r"unremarkable (?:chest|study|exam(?:ination)?|radiograph)",
        r"clear lungs", r"lungs (?:are|appear|remain) (?:otherwise )?clear", r"lungs clear",
        r"no active (?:cardiopulmonary |pulmonary )?disease",
        r"no acute abnormality", r"no abnormality", r"normal",  # "normal": see WHOLE_SENTENCE_ONLY
    ),
    "Pneumonia": (r"pneumonias?", r"pneumonitis", r"bronchopneumonia", r"infectious process", r"lung infection"),
    "Bacterial pneumonia": (r"bacterial pneumonias?", r"bacterial infection"),
    "Viral pneumonia": (r"viral pneumonias?", r"viral pneumonitis", r"viral infection"),
    "COVID-19": (r"covid(?:-?19)?(?: pneumonia)?", r"coronavirus(?: disease)?(?: 2019)?(?: pneumonia)?", r"sars-?cov-?2", r"2019-ncov"),
    "SARS": (r"sars(?!-?cov)", r"severe acute respiratory syndrome"),
    "MERS": (r"mers(?:-cov)?", r"middle east respiratory syndrome"),
    "Tuberculosis": (r"tuberculosis", r"tuberculous", r"\btb\b"),
    "Pneumocystis": (r"pneumocystis(?: jirovecii| carinii)?(?: pneumonia)?", r"\bpcp\b", r"\bpjp\b"),
    "Aspiration pneumonia": (r"aspiration pneumonia", r"aspiration pneumonitis"),
    "Lipoid pneumonia": (r"lipoid pneumonia",),
    "Fungal pneumonia": (r"fungal pneumonia", r"fungal infection"),
    "Atelectasis": (
        r"atelectas[ie]s", r"atelectatic(?: changes?)?", r"(?:lobar |segmental |subsegmental |lung |lobe )?collapse(?:d lung| of the \w+(?: \w+)? lobe)?",
        r"volume loss",
    ),
    "Cardiomegaly": (
        r"cardiomegaly", r"cardiac enlargement", r"enlarged (?:heart|cardiac silhouette|cardiac shadow)",
        r"enlargement of (?:the )?(?:heart|cardiac silhouette)",
        r"(?:the )?(?:heart|cardiac silhouette|heart size|cardiac size)(?: size)? (?:is |appears |remains )?(?:\w+ ){0,2}enlarged",
    ),
    "Consolidation": (
        r"consolidations?", r"consolidative(?: opacit(?:y|ies))?", r"air ?space (?:disease|opacit(?:y|ies)|consolidation)",
        r"alveolar (?:opacit(?:y|ies)|infiltrates?)", r"(?:focal |patchy |lobar )?opacit(?:y|ies)", r"opacification",
    ),
    "Edema": (
        r"(?:pulmonary |interstitial |alveolar )?o?edema", r"(?:pulmonary |central )?(?:vascular|venous) congestion",
        r"pulmonary congestion", r"(?<!nasal )(?<!sinus )congestion", r"fluid overload", r"congestive heart failure", r"\bchf\b",
        r"kerley b lines",
    ),
    "Pleural effusion": (r"(?<!pericardial )(?<!joint )(?:pleural )?effusions?", r"pleural fluid", r"hydrothorax", r"hydropneumothorax"),
    "Emphysema": (
        r"(?<!subcutaneous )(?<!soft tissue )emphysema", r"emphysematous(?: changes?)?", r"hyperinflat(?:ion|ed)(?: lungs)?",
        r"hyperexpan(?:sion|ded)(?: lungs)?", r"hyperaerat(?:ion|ed)", r"\bcopd\b", r"chronic obstructive (?:pulmonary|lung) disease", r"bullous",
        r"chronic lung disease",
    ),
    "Fibrosis": (r"(?:pulmonary |interstitial )?fibrosis", r"fibrotic(?: changes?)?", r"scarring", r"scars?", r"cicatri(?:x|ces)"),
    "Hernia": (r"(?:hiatal |hiatus |diaphragmatic |paraesophageal )?hernia", r"herniation"),
    "Infiltration": (r"infiltrates?", r"infiltration", r"infiltrative(?: changes?)?", r"interstitial (?:opacit(?:y|ies)|markings|prominence)", r"ground[- ]glass(?: opacit(?:y|ies))?"),
    "Mass": (r"mass(?:es)?(?! effect)", r"mass lesions?", r"tumou?rs?", r"neoplasms?"),
    "Nodule": (r"nodules?", r"nodular (?:opacit(?:y|ies)|densit(?:y|ies)|lesions?)", r"nodular"),
    "Pleural thickening": (
        r"pleural thickening", r"pleural-parenchymal thickening", r"thickening of the (?:\w+ )?pleura", r"thickened pleura",
        r"pleural plaques?", r"pleural scarring", r"pleural calcifications?",
    ),
    "Pneumothorax": (r"pneumothora(?:x|ces)", r"\bptx\b"),
}
# Specific opacity shapes name a different finding than opacity in general.
SYNONYMS["Atelectasis"] += (r"(?:linear|platelike|plate-like|discoid|band-like|streaky)(?: \w+)? (?:opacit(?:y|ies)|densit(?:y|ies))",)
SYNONYMS["Fibrosis"] += (r"reticular (?:opacit(?:y|ies)|markings)",)

# Phrases that state a finding is absent without a negation word.
ABSENCE_PHRASES: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        r"normal (?:heart|cardiac) size", r"(?:the )?(?:heart|cardiac silhouette|heart size|cardiac size|cardiomediastinal silhouette)"
        r"(?: and (?:mediastinal|mediastinum|pulmonary vascularity)\w*(?: contours?| size)?)?(?: size)? (?:is |are |appears |remains )?"
        r"(?:normal|within normal limits|upper limits of normal|unremarkable|stable and normal)",
        r"normal (?:cardiac|cardiomediastinal) (?:silhouette|contours?)", r"heart size normal",
    ),
}

PRE_NEGATION = (
    r"no", r"not", r"without", r"negative for", r"no (?:radiographic |definite |convincing |residual )?(?:evidence|signs?) of",
    r"free of", r"absence of", r"absent", r"resolution of", r"resolved", r"clear of", r"never", r"nor", r"neither",
)
POST_NEGATION = (
    r"(?:is|are|was|were)?\s?not (?:seen|identified|present|visualized|visualised|evident|demonstrated|appreciated|detected)",
    r"(?:has|have|is|are) (?:now |since )?resolved", r"(?:is|are) absent", r"no longer (?:seen|present|visualized|evident)", r"(?:is|are|was|been) excluded",
    r"(?:has|have) been ruled out",
)
# Cues that look like negations but are not ("no change in cardiomegaly" means it is there).
PSEUDO_NEGATION = (
    r"no (?:significant |interval |substantial |appreciable )?(?:change|increase|decrease|progression|worsening)",
    r"not (?:significantly )?(?:changed|increased|decreased)", r"without (?:significant |interval )?change",
    r"not only", r"cannot be (?:excluded|ruled out)", r"can ?not exclude", r"not (?:be )?(?:excluded|ruled out)", r"not excluded",
)
UNCERTAINTY = (
    r"possible", r"possibly", r"probable", r"probably", r"may (?:represent|be|reflect)", r"might", r"could (?:represent|be|reflect)",
    r"can ?not exclude", r"questionable", r"question(?: of)?", r"suspicious for", r"suspected", r"concern(?:ing)? for", r"versus",
    r"vs", r"differential", r"equivocal", r"borderline", r"suggestive of", r"suggests?", r"likely", r"favou?r",
    r"and/or", r"correlate(?: clinically)?(?: for)?", r"clinical correlation", r"cannot be (?:excluded|ruled out)",
)
# Hedges that follow the finding they hedge ("pneumonia cannot be excluded", "atelectasis versus scarring").
POST_UNCERTAINTY = (r"cannot be (?:excluded|ruled out)", r"not (?:be )?excluded", r"not ruled out", r"versus", r"vs", r"and/or",
                    r"(?:is |are )?(?:likely|suspected|possible|questioned)")
# Words that end a negation's reach inside a sentence.
CLAUSE_BREAK = (
    r"but", r"however", r"although", r"though", r"whereas", r"while", r"except(?: for)?", r"aside from", r"apart from",
    r"other than", r"with the exception of", r"there (?:is|are|has been|have been)", r"which", r"otherwise", r"and there",
)
WHOLE_SENTENCE_ONLY = {("Normal", "normal")}


def _alternation(patterns: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"(?<![\w-])(?:" + "|".join(f"(?:{p})" for p in sorted(patterns, key=len, reverse=True)) + r")(?![\w-])")


@dataclass(frozen=True)
class FindingMention:
    """One finding named in a text: its vocabulary label, whether the text says it is absent or hedges it, and where."""

    label: str
    negated: bool
    uncertain: bool
    start: int
    end: int
    text: str


_MENTION_PATTERNS = [
    (label, pattern, False, re.compile(r"(?<![\w-])(?:" + pattern + r")(?![\w-])"))
    for label, patterns in SYNONYMS.items()
    for pattern in patterns
] + [
    (label, pattern, True, re.compile(r"(?<![\w-])(?:" + pattern + r")(?![\w-])"))
    for label, patterns in ABSENCE_PHRASES.items()
    for pattern in patterns
]
_PRE_NEGATION = _alternation(PRE_NEGATION)
_POST_NEGATION = _alternation(POST_NEGATION)
_PSEUDO_NEGATION = _alternation(PSEUDO_NEGATION)
_UNCERTAINTY = _alternation(UNCERTAINTY)
_POST_UNCERTAINTY = _alternation(POST_UNCERTAINTY)
_CLAUSE_BREAK = _alternation(CLAUSE_BREAK)
# Sentence and clause ends: . ! ? ; : and newlines (not decimal points such as "1.5 cm").
_SENTENCE_END = re.compile(r"(?:[.!?;:](?!\d)|\n)+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence or clause of `text` ending at . ! ? ; : or a newline; list numbers ("1.") are dropped."""
    spans, start = [], 0
    for end_match in _SENTENCE_END.finditer(text):
        spans.append((start, end_match.start()))
        start = end_match.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if re.search(r"[a-zA-Z]", text[s:e])]


def find_findings(text: str) -> list["FindingMention"]:
    """Every vocabulary finding `text` names, in order, each marked negated and/or uncertain.

    >>> [(m.label, m.negated) for m in find_findings("Cardiomegaly. No focal consolidation, effusion or pneumothorax.")]
    [('Cardiomegaly', False), ('Consolidation', True), ('Pleural effusion', True), ('Pneumothorax', True)]
    """
    if not isinstance(text, str):
        raise TypeError(f"expected text, got {type(text).__name__}")
    lower = text.lower()
    mentions: list[FindingMention] = []
    for start, end in sentence_spans(lower):
        sentence = lower[start:end]
        found = []
        for label, pattern, absent, compiled in _MENTION_PATTERNS:
            for match in compiled.finditer(sentence):
                if (label, pattern) in WHOLE_SENTENCE_ONLY and sentence[: match.start()].strip(" ,0123456789") + sentence[match.end():].strip(" ,"):
                    continue
                found.append((match.start(), match.end(), label, absent))
        # Longest match first, then earliest: overlapping shorter matches are dropped.
        found.sort(key=lambda f: (-(f[1] - f[0]), f[0]))
        taken: list[tuple[int, int, str, bool]] = []
        for candidate in found:
            if all(candidate[1] <= t[0] or candidate[0] >= t[1] for t in taken):
                taken.append(candidate)
        taken.sort()
        pseudo = [m.span() for m in _PSEUDO_NEGATION.finditer(sentence)]
        # Cues inside a mention ("no acute disease" is a Normal mention) or a pseudo-negation do not negate.
        blocked = pseudo + [(t[0], t[1]) for t in taken if t[2] == "Normal"]

        def free(span: tuple[int, int]) -> bool:
            # Only a cue wholly inside: "clear of" in "lungs are clear of pneumonia" still negates.
            return not any(b0 <= span[0] and span[1] <= b1 for b0, b1 in blocked)

        pre = [m.span() for m in _PRE_NEGATION.finditer(sentence) if free(m.span())]
        post = [m.span() for m in _POST_NEGATION.finditer(sentence) if free(m.span())]
        breaks = [m.start() for m in _CLAUSE_BREAK.finditer(sentence)]
        hedges = [m.start() for m in _UNCERTAINTY.finditer(sentence)]
        post_hedges = [m.start() for m in _POST_UNCERTAINTY.finditer(sentence)]
        for m_start, m_end, label, absent in taken:
            # A clause break between the cue and the mention ends the cue's reach.
            negated = absent or any(
                (p_start < m_start or (label != "Normal" and m_start <= p_start < m_end))
                and not any(p_start < b < m_start for b in breaks)
                for p_start, _ in pre
            ) or any(q_start >= m_end and not any(m_end <= b < q_start for b in breaks) for q_start, _ in post)
            uncertain = any(h < m_start and not any(h < b < m_start for b in breaks) for h in hedges) or any(
                h >= m_end and not any(m_end <= b < h for b in breaks) for h in post_hedges
            )
            mentions.append(FindingMention(label, negated, uncertain, start + m_start, start + m_end, text[start + m_start : start + m_end]))
    return mentions


def positive_findings(text: str) -> list[str]:
    """Labels `text` asserts (not negated), in vocabulary order; "Normal" is dropped when a finding is asserted."""
    labels = {m.label for m in find_findings(text) if not m.negated}
    if len(labels) > 1:
        labels.discard("Normal")
    return [label for label in KNOWN_LABELS if label in labels]
