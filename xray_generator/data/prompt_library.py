"""Example prompts in real radiology-report language, copied from the Indiana University (IU) reports.

The studio offers these as starting prompts. They are text only: no image in the training set belongs
to any of these reports (see `shared/data/iu_reports/README.md`), so they are examples of how
radiologists write, not captions of our images.

Licence: **not stated** by the source (the README records a third-party claim of CC BY-NC-ND 4.0 that
was not verified). Because "no derivatives" may apply, report text is copied verbatim: a report whose
findings or impression contain the de-identification mask ``XXXX`` is left out rather than repaired,
and only whitespace is normalised.

    python -m xray_generator.data.prompt_library            # rebuild dataset/prompt_library.csv
"""
from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import pandas as pd

from xray_generator.paths import REPO_ROOT, iu_reports_dir

PROMPT_LIBRARY_FILE = "prompt_library.csv"
PROMPT_COLUMNS = ("uid", "section", "problems", "prompt", "source", "license")
SOURCE = "Indiana University chest X-ray reports (Open-i; Demner-Fushman et al. 2016), indiana_reports.csv"
LICENSE = "not stated"
DEFAULT_SIZE = 200
# Reports are long; the studio's text encoder reads 64 tokens, so longer reports would be truncated.
MAX_WORDS = 45
MIN_WORDS = 3
# Over a third of IU studies are normal; cap them so the examples show the range of findings.
MAX_NORMAL_SHARE = 0.2
DEID_MASK = "XXXX"


def _clean(text: object) -> str:
    if not isinstance(text, str):
        return ""
    return re.sub(r"\s+", " ", text).strip()


def candidate_prompt(findings: object, impression: object) -> tuple[str, str] | None:
    """(section, prompt) for one report, or None when it has no usable unmasked text.

    Findings and impression together make the richest prompt; the impression alone is used when the
    findings are missing or masked, or together they are too long.
    """
    findings, impression = _clean(findings), _clean(impression)
    usable_findings = bool(findings) and DEID_MASK not in findings
    usable_impression = bool(impression) and DEID_MASK not in impression
    if usable_findings and usable_impression:
        both = f"{findings} Impression: {impression}"
        if len(both.split()) <= MAX_WORDS:
            return "findings+impression", both
    if usable_findings and MIN_WORDS <= len(findings.split()) <= MAX_WORDS:
        return "findings", findings
    if usable_impression and MIN_WORDS <= len(impression.split()) <= MAX_WORDS:
        return "impression", impression
    return None


def build_prompt_library(reports_csv: str | Path | None = None, size: int = DEFAULT_SIZE, seed: int = 0) -> pd.DataFrame:
    """Choose `size` distinct prompts, spread over the reports' problem terms, deterministically.

    Reports are grouped by their first `Problems` term; groups take turns (most frequent first), each
    giving a seeded-random report at a time, so rare findings appear next to the common ones.
    """
    path = Path(reports_csv) if reports_csv is not None else iu_reports_dir() / "indiana_reports.csv"
    reports = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows, seen = [], set()
    for record in reports.itertuples(index=False):
        found = candidate_prompt(record.findings, record.impression)
        if found is None:
            continue
        section, prompt = found
        key = prompt.lower()
        if key in seen:
            continue
        seen.add(key)
        problems = _clean(record.Problems)
        rows.append({"uid": int(record.uid), "section": section, "problems": problems, "prompt": prompt, "group": problems.split(";")[0] or "normal"})
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    for members in groups.values():
        rng.shuffle(members)
    quotas = _group_quotas({g: len(m) for g, m in groups.items()}, size)
    chosen = [row for group, quota in quotas.items() for row in groups[group][:quota]]
    table = pd.DataFrame(chosen).sort_values("uid").reset_index(drop=True)
    table["source"] = SOURCE
    table["license"] = LICENSE
    return table[list(PROMPT_COLUMNS)]


def _group_quotas(available: dict[str, int], size: int) -> dict[str, int]:
    """Prompts per problem group, proportional to the square root of the group's size.

    Square-root weights keep common findings (cardiomegaly, opacity) common among the examples
    while rare ones still appear; "normal" is capped at MAX_NORMAL_SHARE of the library.
    """
    caps = dict(available)
    if "normal" in caps:
        caps["normal"] = min(caps["normal"], int(size * MAX_NORMAL_SHARE))
    quotas = {g: 0 for g in caps}
    remaining = min(size, sum(caps.values()))
    while remaining > 0:
        open_groups = [g for g in caps if quotas[g] < caps[g]]
        weights = {g: available[g] ** 0.5 for g in open_groups}
        total = sum(weights.values())
        shares = {g: remaining * w / total for g, w in weights.items()}
        # At least one each round, largest shares first, so the loop always progresses.
        for group in sorted(open_groups, key=lambda g: (-shares[g], g)):
            if remaining == 0:
                break
            take = min(caps[group] - quotas[group], max(1, int(shares[group])), remaining)
            quotas[group] += take
            remaining -= take
    return quotas


def default_prompt_library_path() -> Path:
    # A shipped asset beside the sample, not sample data: CXR_SAMPLE_DIR does not move it.
    return REPO_ROOT / "dataset" / PROMPT_LIBRARY_FILE


def load_prompt_library(path: str | Path | None = None) -> pd.DataFrame:
    """The shipped prompt table (uid, section, problems, prompt, source, license); empty if the file is absent."""
    path = Path(path) if path is not None else default_prompt_library_path()
    if not path.is_file():
        return pd.DataFrame(columns=list(PROMPT_COLUMNS))
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PROMPT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is missing columns: {', '.join(missing)}")
    return table[list(PROMPT_COLUMNS)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default=None, help="indiana_reports.csv (default: paths.iu_reports_dir())")
    parser.add_argument("--out", default=None, help=f"output CSV (default: dataset/{PROMPT_LIBRARY_FILE})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = build_prompt_library(args.reports, args.size, args.seed)
    out = Path(args.out) if args.out else default_prompt_library_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"wrote {len(table)} prompts to {out}")


if __name__ == "__main__":
    main()
