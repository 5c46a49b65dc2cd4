"""What a shipped text-to-image model was trained on, per finding, and notices for prompts that ask beyond it.

`training_vocabulary.json` (in the weights folder, listed in its MANIFEST) holds the number of
training images of every vocabulary label. A prompt that asserts a finding the model saw fewer than
`RARE_BELOW` times, or never, gets a notice; negated findings ("no pneumothorax") are not requests.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from xray_generator.data.manifest import split_labels
from xray_generator.io import atomic_write_text
from xray_generator.vocabulary import KNOWN_LABELS, find_findings

TRAINING_VOCABULARY_FILE = "training_vocabulary.json"
# Below ~100 images a finding is a small share (<2 %) of a ~6,000-image training set; such findings
# are learnt weakly or not at all by a model of this size, so the user is told to expect little.
RARE_BELOW = 100


def training_label_counts(table: pd.DataFrame) -> dict[str, int]:
    """Training images per vocabulary label (every label listed, 0 included), from manifest rows."""
    counts = {label: 0 for label in KNOWN_LABELS}
    for labels in table["labels"]:
        for label in set(split_labels(None if pd.isna(labels) else labels)):
            if label not in counts:
                raise ValueError(f"label {label!r} is not in the vocabulary")
            counts[label] += 1
    return counts


def training_vocabulary(table: pd.DataFrame, description: str) -> dict:
    """The JSON document: images, per-label counts, and a sentence saying which rows were counted."""
    return {"n_images": int(len(table)), "rare_below": RARE_BELOW, "description": description, "label_counts": training_label_counts(table)}


def write_training_vocabulary(folder: str | Path, document: dict) -> Path:
    path = Path(folder) / TRAINING_VOCABULARY_FILE
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return path


def load_training_vocabulary(folder: str | Path) -> dict | None:
    """The folder's training vocabulary, or None when the weights predate it."""
    path = Path(folder) / TRAINING_VOCABULARY_FILE
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    if not isinstance(document.get("label_counts"), dict):
        raise ValueError(f"{path} has no label_counts")
    return document


def prompt_notices(prompt: str, vocabulary: dict | None) -> list[str]:
    """One notice per finding the prompt asks for that the model saw rarely or never; [] without a vocabulary."""
    if vocabulary is None:
        return []
    counts = vocabulary["label_counts"]
    rare_below = int(vocabulary.get("rare_below", RARE_BELOW))
    notices, seen = [], set()
    for mention in find_findings(prompt):
        if mention.negated or mention.label in seen:
            continue
        seen.add(mention.label)
        n = int(counts.get(mention.label, 0))
        if n == 0:
            notices.append(f"{mention.label.lower()} (\"{mention.text}\"): not in the training data: expect it to be ignored")
        elif n < rare_below:
            notices.append(f"{mention.label.lower()} (\"{mention.text}\"): {n} training film{'s' if n != 1 else ''}: expect it to be weak or ignored")
    return notices


def format_vocabulary(vocabulary: dict) -> str:
    """A table of the labels the model was trained on, most frequent first, then those it never saw."""
    counts = vocabulary["label_counts"]
    rare_below = int(vocabulary.get("rare_below", RARE_BELOW))
    lines = [f"{vocabulary['n_images']} training images. {vocabulary.get('description', '')}".strip(), ""]
    for label, n in sorted(counts.items(), key=lambda item: (-item[1], KNOWN_LABELS.index(item[0]) if item[0] in KNOWN_LABELS else 0)):
        flag = "not in the training data" if n == 0 else ("rare" if n < rare_below else "")
        lines.append(f"{label:<22}{n:>6}  {flag}".rstrip())
    return "\n".join(lines)
