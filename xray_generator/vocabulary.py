"""The label vocabulary: the one place that names findings and how to say them in radiology language."""
from __future__ import annotations

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
