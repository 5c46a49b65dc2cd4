"""Real report impressions as training prompts: IU impressions whose findings the vocabulary reads.

No image here has its own report, so a film borrows the impression of *another* patient's report
that says what its labels say. An impression qualifies when the vocabulary
(`xray_generator.vocabulary.find_findings`) accounts for all of it:

- no de-identification gap (``XXXX``) and at most `MAX_WORDS` words (the text encoder reads 64 tokens);
- every sentence names at least one vocabulary finding, asserted or negated, so the text says
  nothing the film's labels cannot vouch for ("Stable calcified granuloma." names none: left out);
- no finding is hedged ("possible pneumonia", "atelectasis versus scarring");
- it names nothing in `OUTSIDE_VOCABULARY` (chronic changes, devices, surgery, granulomas...), which a
  sentence can mention beside a vocabulary finding ("Cardiomegaly. Sternotomy wires.");
- its asserted findings are known; an impression that asserts nothing and only negates
  ("No pneumothorax or effusion.") reads as Normal.

A film is matched to impressions in `xray_generator.data.prompts.matching_report_prompts`.
Text is copied verbatim (whitespace normalised only), as in `prompt_library` (licence not stated).

    python -m xray_generator.data.report_prompts          # rebuild dataset/report_prompts.csv
"""
from __future__ import annotations

import argparse
import re
from functools import lru_cache
from pathlib import Path

import pandas as pd

from xray_generator.data.prompt_library import DEID_MASK, LICENSE, SOURCE, _clean
from xray_generator.io import atomic_write_text
from xray_generator.paths import REPO_ROOT, iu_reports_dir
from xray_generator.vocabulary import KNOWN_LABELS, find_findings, sentence_spans

REPORT_PROMPTS_FILE = "report_prompts.csv"
REPORT_PROMPT_COLUMNS = ("uid", "impression", "findings", "negated", "exhaustive", "source", "license")
MAX_WORDS = 45
# Things reports say that no label covers; an impression naming one would caption a film with it.
OUTSIDE_VOCABULARY = re.compile(
    r"chronic|interstitial lung disease|granulom|sternotomy|degenerative|fracture|surg|post ?-?op|catheter|"
    r"tube|pacemaker|\bline\b|picc|calcifi|metasta|sarcoid|low lung volume|hypoinflat|hypoventilat|underinflat|deformit|"
    r"kyphosis|scoliosis|aort|hilar|lymph|clips?\b|cabg|prosthe|valve|hypertension|artery|arteries|spine|osseous|bony|rib",
    re.IGNORECASE,
)


def read_impression(text: str) -> tuple[list[str], list[str], bool] | None:
    """(asserted labels, negated labels, exhaustive) of an impression the vocabulary fully accounts for, else None.

    Asserted labels are in vocabulary order; "Normal" is dropped when a finding is asserted, and an
    impression that only negates findings reads as ["Normal"]. `exhaustive` is True when it also
    says nothing else is wrong ("Left basilar atelectasis, otherwise no acute disease."): such an
    impression cannot caption a film with more findings than it names.
    """
    text = _clean(text)
    if not text or DEID_MASK in text or len(text.split()) > MAX_WORDS or OUTSIDE_VOCABULARY.search(text):
        return None
    mentions = find_findings(text)
    if any(m.uncertain for m in mentions):
        return None
    for start, end in sentence_spans(text):
        if not any(start <= m.start < end for m in mentions):
            return None
    asserted = {m.label for m in mentions if not m.negated}
    negated = {m.label for m in mentions if m.negated} - asserted
    exhaustive = "Normal" in asserted
    if not asserted:
        if not negated:
            return None
        asserted = {"Normal"}
    if len(asserted) > 1:
        asserted.discard("Normal")
    return [l for l in KNOWN_LABELS if l in asserted], [l for l in KNOWN_LABELS if l in negated], exhaustive


def build_report_prompts(reports_csv: str | Path | None = None) -> pd.DataFrame:
    """Every distinct qualifying IU impression with its asserted and negated labels, by uid."""
    path = Path(reports_csv) if reports_csv is not None else iu_reports_dir() / "indiana_reports.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no IU reports at {path} (set CXR_IU_REPORTS_DIR)")
    reports = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows, seen = [], set()
    for record in reports.itertuples(index=False):
        impression = _clean(record.impression)
        read = read_impression(impression)
        if read is None or impression in seen:
            continue
        seen.add(impression)
        asserted, negated, exhaustive = read
        rows.append({"uid": int(record.uid), "impression": impression, "findings": "; ".join(asserted), "negated": "; ".join(negated),
                     "exhaustive": "yes" if exhaustive else ""})
    table = pd.DataFrame(rows, columns=["uid", "impression", "findings", "negated", "exhaustive"]).sort_values("uid").reset_index(drop=True)
    table["source"] = SOURCE
    table["license"] = LICENSE
    return table[list(REPORT_PROMPT_COLUMNS)]


def default_report_prompts_path() -> Path:
    # A shipped training asset beside the sample: training prompts must not depend on the shared folder.
    return REPO_ROOT / "dataset" / REPORT_PROMPTS_FILE


@lru_cache(maxsize=4)
def load_report_prompts(path: str | Path | None = None) -> pd.DataFrame:
    """The shipped impression table; empty (same columns) when the file is absent."""
    path = Path(path) if path is not None else default_report_prompts_path()
    if not path.is_file():
        return pd.DataFrame(columns=list(REPORT_PROMPT_COLUMNS))
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REPORT_PROMPT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is missing columns: {', '.join(missing)}")
    return table[list(REPORT_PROMPT_COLUMNS)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default=None, help="indiana_reports.csv (default: paths.iu_reports_dir())")
    parser.add_argument("--out", default=None, help=f"output CSV (default: dataset/{REPORT_PROMPTS_FILE})")
    args = parser.parse_args(argv)
    table = build_report_prompts(args.reports)
    out = Path(args.out) if args.out else default_report_prompts_path()
    atomic_write_text(out, table.to_csv(index=False))
    counts = table["findings"].str.split("; ").explode().value_counts()
    print(f"wrote {len(table)} impressions to {out}")
    print(counts.to_string())


if __name__ == "__main__":
    main()
