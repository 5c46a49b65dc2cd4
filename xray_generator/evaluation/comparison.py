"""The generator comparison table, built from `outputs/metrics/<family>.json` and nothing else.

    python -m xray_generator.evaluation.comparison                  # print the table (markdown)
    python -m xray_generator.evaluation.comparison --write-readme   # also put it in README.md

One row per family of the registry: time per image, parameters, FID against its real-vs-real
floor, PRDC precision / recall, intra-prompt MS-SSIM diversity next to its real reference,
condition fidelity (AUROC, pneumonia vs normal requests) next to the real-image AUROC,
memorisation and n. The CVAE's paired translation metrics get a table of their own, the
realism test (`outputs/metrics/realism_*.json`) a third, and condition fidelity per NIH finding
and for adults (`outputs/metrics/findings_*.json`) a fourth. A family
without a metrics file is listed as not evaluated yet, with the command that makes the file.
Every number printed is read from a metrics file; none is typed in here.

With ``--write-readme`` the text between ``<!-- comparison:start -->`` and
``<!-- comparison:end -->`` in README.md is replaced (atomically); the rest is left as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xray_generator.evaluation.report import read_metrics_json
from xray_generator.io import atomic_write_text
from xray_generator.paths import REPO_ROOT, outputs_dir
from xray_generator.pipelines.registry import GENERATOR_FAMILIES

START_MARKER = "<!-- comparison:start -->"
END_MARKER = "<!-- comparison:end -->"
COLUMNS = ("family", "time / image", "parameters", "FID (real-vs-real floor)", "precision / recall (floor)",
           "diversity: intra-prompt MS-SSIM (real ref.)", "condition fidelity AUROC, pneumonia vs normal (real)",
           "memorisation ≥ 0.95", "n")
TRANSLATION_COLUMNS = ("family", "n sources (test + val)", "reconstruction SSIM / PSNR", "translation SSIM to source",
                       "score rises", "rises with SSIM ≥ 0.6", "above own reconstruction")


def evaluate_command(family: str) -> str:
    return f"python -m xray_generator evaluate --model {family} --n 1000"


def load_family_metrics(metrics_dir: str | Path | None = None) -> dict[str, dict | str | None]:
    """Per registry family: its validated metrics document, None without a file, or the error text of a file that does not validate."""
    folder = Path(metrics_dir) if metrics_dir is not None else outputs_dir() / "metrics"
    documents: dict[str, dict | str | None] = {}
    for family in GENERATOR_FAMILIES:
        path = folder / f"{family}.json"
        if not path.is_file():
            documents[family] = None
            continue
        try:
            documents[family] = read_metrics_json(path)
        except (OSError, ValueError) as exc:
            documents[family] = f"{path.name} could not be read ({exc})"
    return documents


# ---------------------------------------------------------------------------- formatting
def _number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}"


def _unit(value: float) -> str:
    """A value in [0, 1] (precision, recall, MS-SSIM, correlation): 3 decimals, so 1.000 and 0.100 keep their precision."""
    return f"{value:.3f}"


def _seconds(value: float) -> str:
    return f"{value * 1000:.3g} ms" if value < 0.1 else f"{value:.3g} s"


def _count(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1e6:.3g} M"
    return f"{value / 1e3:.3g} k" if value >= 1000 else str(value)


def _percent(value: float) -> str:
    return f"{100 * value:.3g} %"


def _share_with_ci(metric: dict | None) -> str:
    if metric is None:
        return "n/a"
    ci = metric["ci"]
    return f"{_percent(metric['value'])} [{_percent(ci['low'])}, {_percent(ci['high'])}]" if ci else _percent(metric["value"])


def family_row(family: str, document: dict) -> list[str]:
    """The table cells of one evaluated family."""
    settings = document["settings"]
    metrics = {metric["name"]: metric for metric in document["metrics"]}
    not_recorded = "not recorded (rerun the evaluation)"
    time_cell = _seconds(settings["seconds_per_image"]) if "seconds_per_image" in settings else not_recorded
    parameters_cell = _count(int(settings["parameters"])) if "parameters" in settings else not_recorded

    fid = metrics["fid"]
    fid_cell = f"{_number(fid['value'])} ({_number(fid['floor']['value'])}, {fid['value'] / max(fid['floor']['value'], 1e-12):.3g}×)"
    precision, recall = metrics["prdc_precision"], metrics["prdc_recall"]
    pr_cell = (f"{_unit(precision['value'])} / {_unit(recall['value'])} "
               f"({_unit(precision['floor']['value'])} / {_unit(recall['floor']['value'])})")

    diversity = metrics.get("diversity_intra_prompt_ms_ssim")
    diversity_cell = "not measured"
    if diversity is not None:
        reference = f"{_unit(diversity['floor']['value'])}; " if diversity["floor"] else ""
        diversity_cell = f"{_unit(diversity['value'])} ({reference}{diversity['n']['pairs']} pairs)"

    fidelity = metrics.get("condition_fidelity_auroc_pneumonia_vs_normal")
    if fidelity is not None:
        fidelity_cell = f"{_number(fidelity['value'], 4)} ({_number(fidelity['floor']['value'], 4)})"
    elif settings.get("conditions") == []:
        fidelity_cell = "n/a (unconditional)"
    else:
        fidelity_cell = "not measured (too few requests of one class)"

    memorisation = metrics["memorisation_rate"]
    real_memorisation = f"real held-out films {_percent(memorisation['floor']['value'])}; " if memorisation.get("floor") else ""
    memorisation_cell = f"{_percent(memorisation['value'])} ({real_memorisation}max corr. {_unit(memorisation['extra']['max_pixel_correlation'])})"
    n_cell = f"{settings['n_generated']:,} (FID {fid['n']['generated']:,} vs {fid['n']['real']:,})"
    return [f"`{family}`", time_cell, parameters_cell, fid_cell, pr_cell, diversity_cell, fidelity_cell, memorisation_cell, n_cell]


def translation_row(family: str, document: dict) -> list[str] | None:
    """The paired-metric cells of an image-to-image family (the CVAE); None when the file has none."""
    metrics = {metric["name"]: metric for metric in document["metrics"]}
    if "paired_reconstruction_ssim" not in metrics:
        return None
    sources = document["settings"].get("n_sources", {})
    ssim, psnr = metrics["paired_reconstruction_ssim"], metrics["paired_reconstruction_psnr_db"]
    translation = metrics["translation_ssim_to_source"]
    rising_with_ssim = next((m for name, m in metrics.items() if name.startswith("translation_share_rising_with_ssim")), None)
    return [
        f"`{family}`", f"{ssim['n']['images']:,} ({sources.get('test', '?')} + {sources.get('val', '?')})",
        f"{_unit(ssim['value'])} / {_number(psnr['value'])} dB", _unit(translation["value"]),
        _share_with_ci(metrics.get("translation_share_score_rising")), _share_with_ci(rising_with_ssim),
        _share_with_ci(metrics.get("translation_share_above_reconstruction")),
    ]


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * len(columns)) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def comparison_markdown(documents: dict[str, dict | str | None]) -> str:
    """The comparison as markdown: the main table, the CVAE's translation table, and how to read them."""
    rows, translation_rows, sizes, references = [], [], {}, {}
    for family, document in documents.items():
        if document is None:
            rows.append([f"`{family}`", f"not evaluated yet: `{evaluate_command(family)}`"] + [""] * (len(COLUMNS) - 2))
        elif isinstance(document, str):
            rows.append([f"`{family}`", f"{document}; rerun `{evaluate_command(family)}`"] + [""] * (len(COLUMNS) - 2))
        else:
            rows.append(family_row(family, document))
            sizes[family] = document["settings"]["n_generated"]
            if "real_reference" in document["settings"]:
                references[family] = document["settings"]["real_reference"]
            translation = translation_row(family, document)
            if translation is not None:
                translation_rows.append(translation)
    lines = [
        "Generated by `python -m xray_generator.evaluation.comparison --write-readme` from `outputs/metrics/<family>.json`, "
        "each written by `python -m xray_generator evaluate --model <family>`: the same real held-out films (val + test, "
        "resized to each family's image size), the same real-vs-real floor and the same feature space (our chest X-ray "
        "classifier) for every family" + "".join(f"; {family} is held against {text}" for family, text in references.items()) + ".",
        "",
    ]
    lines += _table(COLUMNS, rows)
    lines.append("")
    if len(sizes) == 1:
        lines += [f"n: {next(iter(sizes))} generated {next(iter(sizes.values())):,} images.", ""]
    elif len(set(sizes.values())) == 1:
        lines += [f"n: every evaluated family generated {next(iter(sizes.values())):,} images.", ""]
    elif sizes:
        lines += ["n differs between families: " + ", ".join(f"{family} {n:,}" for family, n in sizes.items())
                  + " generated images (the CVAE translates at most the held-out Normal films there are).", ""]
    lines += [
        "FID is measured against one real half and its floor is the two real halves against each other, at the same N "
        "(the ratio is FID / floor). Diversity: mean MS-SSIM of pairs of samples of one prompt slot (4 samples each; a "
        "slot is a prompt for ldm, a class for a conditional family, any sample for an unconditional one, a source film "
        "for the CVAE, whose samples share that film's anatomy by design); lower is more diverse, next to random real pairs "
        "sharing a label. Condition fidelity is the classifier's AUROC between images asked to show pneumonia and images "
        "asked to be normal (the CVAE: translations against reconstructions of the same films), next to its AUROC on real "
        "test films. Memorisation: share of samples with at least 0.95 pixel correlation to a training film, next to the "
        "share of real held-out films (other patients) that pass the same line where the metrics file has it: films of one "
        "child or one positioning do, so only a rate above it suggests copying. Time per "
        "image: median of single-image calls on the machine that ran the evaluation.",
    ]
    if translation_rows:
        lines += ["", "Image-to-image translation (paired metrics: each output against its own source film):", ""]
        lines += _table(TRANSLATION_COLUMNS, translation_rows)
    return "\n".join(lines)


REALISM_COLUMNS = ("real films vs", "C2ST accuracy [95 % CI] (real-vs-real floor)", "classifier",
                   "worst power-spectrum band: gap in log10 power (floor)", "CNN detector accuracy (floor)", "n per set", "weights")


def realism_row(document: dict) -> list[str]:
    """The cells of one realism file (`xray_generator.evaluation.realism`)."""
    metrics = {metric["name"]: metric for metric in document["metrics"]}
    c2st, spectrum = metrics["realism_c2st_accuracy"], metrics["realism_spectrum_max_band_gap"]
    cnn = metrics.get("realism_cnn_detector_accuracy")
    c2st_cell = f"{_unit(c2st['value'])} [{_unit(c2st['ci']['low'])}, {_unit(c2st['ci']['high'])}] ({_unit(c2st['floor']['value'])})"
    band = spectrum["extra"]["worst_band"]
    spectrum_cell = f"{spectrum['extra']['worst_gap']:+.2f} at {band} cycles/px ({_number(spectrum['floor']['value'], 2)})"
    cnn_cell = f"{_unit(cnn['value'])} ({_unit(cnn['floor']['value'])})" if cnn else "not run"
    weights = (document.get("weights_sha256") or "")[:16]
    return [document["model"], c2st_cell, c2st["extra"]["classifier"], spectrum_cell, cnn_cell, f"{c2st['n']['real']:,}", f"`{weights}`"]


def realism_markdown(documents: list[dict]) -> str:
    """The realism table (one row per `outputs/metrics/realism_*.json`) and how to read it."""
    if not documents:
        return ("Realism (C2ST): not measured yet: `python -m xray_generator realism --model ldm --roundtrip` and "
                "`python -m xray_generator realism --model <family>`.")
    lines = ["Realism: can a plain classifier tell real held-out films (stored at 256 px) from each set? Written by "
             "`python -m xray_generator realism`, on the raw generator output (8-bit, nothing applied after decoding):", ""]
    def order(document: dict) -> tuple[int, bool]:
        # Registry order (ldm first), each model's round trip before its generated images.
        family, roundtrip, _ = document["model"].partition(" round trip")
        families = list(GENERATOR_FAMILIES)
        return (families.index(family) if family in families else len(families), not roundtrip)

    lines += _table(REALISM_COLUMNS, [realism_row(document) for document in sorted(documents, key=order)])
    lines += ["", "C2ST: the better of a logistic regression and a gradient-boosted classifier on radial power-spectrum bands, "
              "gradient statistics and the intensity histogram, 5-fold cross-validated with folds grouped by patient; 0.5 is "
              "chance. The floor is real against real with disjoint patients. The spectrum gap is the set's mean log10 power "
              "minus the real films' in its worst band (target: within ±0.15 in every band). The CNN detector is reported only."]
    return "\n".join(lines)


FINDINGS_COLUMNS = ("model", "condition fidelity", "generated [95 % CI]", "real held-out [95 % CI]", "target", "n generated", "n real")
FINDINGS_COMMAND = "python -m xray_generator findings --model ldm --n 200"


def _value_with_ci(value: float, ci: dict | None) -> str:
    return f"{_unit(value)} [{_unit(ci['low'])}, {_unit(ci['high'])}]" if ci else _unit(value)


def _counts(n: dict | int) -> str:
    return ", ".join(f"{count:,} {name.replace('_', ' ')}" for name, count in n.items()) if isinstance(n, dict) else f"{n:,}"


def findings_rows(document: dict) -> list[list[str]]:
    """The cells of one findings file (`xray_generator.evaluation.findings`): each finding, then the adult questions."""
    rows = []
    for metric in document["metrics"]:
        name, extra, floor = metric["name"], metric["extra"], metric["floor"]
        if name.startswith("condition_fidelity_auroc_finding_"):
            what = f"{extra['finding']}: adult prompts vs adult Normal prompts (finding head AUROC)"
            target = "reported next to real"
        elif name == "condition_fidelity_adult_centroid_share":
            what = "adult Normal prompts whose nearest real centroid is adult (share)"
            target = f"{extra['target']}: {'met' if extra['meets_target'] else 'not met'}"
        elif name == "condition_fidelity_auroc_adult_pneumonia_vs_adult_normal":
            what = "adult Pneumonia vs adult Normal prompts (classifier AUROC)"
            target = "within 0.05 of real (next row)"
        elif name == "condition_fidelity_auroc_gap_adult_pneumonia":
            what = "gap: generated AUROC − real AUROC"
            target = f"{extra['target']}: {'met' if extra['meets_target'] else 'not met'}"
            generated = {k: v for k, v in metric["n"].items() if k.startswith("generated")}
            real = {k: v for k, v in metric["n"].items() if k.startswith("real")}
            rows.append([document["model"], what, f"{metric['value']:+.3f} [{metric['ci']['low']:+.3f}, {metric['ci']['high']:+.3f}]",
                         "", target, _counts(generated), _counts(real)])
            continue
        else:
            continue
        rows.append([document["model"], what, _value_with_ci(metric["value"], metric["ci"]),
                     _value_with_ci(floor["value"], floor["ci"]) if floor else "", target, _counts(metric["n"]),
                     _counts(floor["n"]) if floor else ""])
    return rows


def findings_markdown(documents: list[dict]) -> str:
    """The table of condition fidelity per NIH finding and for adults (one block of rows per `outputs/metrics/findings_*.json`)."""
    if not documents:
        return f"Condition fidelity per NIH finding and for adults: not measured yet: `{FINDINGS_COMMAND}`."
    lines = ["Condition fidelity per NIH finding and for adults, written by `python -m xray_generator findings` "
             "(real: held-out val + test adult films; findings scored by `weights/finding_head`):", ""]
    lines += _table(FINDINGS_COLUMNS, [row for document in documents for row in findings_rows(document)])
    for document in documents:
        findings = document["settings"].get("findings", {})
        left_out = [f"{label} ({entry['reason']})" for label, entry in findings.items() if not entry["qualifies"]]
        if left_out:
            lines += ["", f"{document['model']}: findings that do not qualify: " + "; ".join(left_out) + "."]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with everything between the comparison markers replaced by `block`; ValueError without both markers in order."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"README has no {START_MARKER} ... {END_MARKER} block to replace")
    return text[:start + len(START_MARKER)] + "\n" + block.strip("\n") + "\n" + text[end:]


def write_readme(block: str, readme: str | Path = REPO_ROOT / "README.md") -> Path:
    readme = Path(readme)
    atomic_write_text(readme, replace_block(readme.read_text(encoding="utf-8"), block))
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xray_generator.evaluation.comparison", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-readme", action="store_true", help="replace the comparison block of README.md")
    parser.add_argument("--metrics-dir", default=None, help="folder of the metrics files (default outputs/metrics)")
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="the README to update (default the repository's)")
    args = parser.parse_args(argv)
    from xray_generator.evaluation.findings import load_findings_documents
    from xray_generator.evaluation.realism import load_realism_documents

    block = (comparison_markdown(load_family_metrics(args.metrics_dir)) + "\n\n" + realism_markdown(load_realism_documents(args.metrics_dir))
             + "\n\n" + findings_markdown(load_findings_documents(args.metrics_dir)))
    print(block)
    if args.write_readme:
        try:
            print(f"\nwrote {write_readme(block, args.readme)}", file=sys.stderr)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
