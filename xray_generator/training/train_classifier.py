"""Train the multi-label chest X-ray classifier from random initialisation (the domain feature space).

Train split only for the weights; the val split picks the checkpoint (best mean val AUROC of the
EMA weights); the test split is touched once, by `evaluate`, for the model card.

    python -m xray_generator.training.train_classifier train --config configs/classifier.json --run outputs/runs/classifier --resume
    python -m xray_generator.training.train_classifier export --run outputs/runs/classifier --out weights/classifier
    python -m xray_generator.training.train_classifier evaluate --weights weights/classifier

`export` runs `evaluate` too (model card README.md and test_metrics.json); run `evaluate` alone to
redo the card on other data. Images are resized once to the training resolution and cached as
uint8 under the cache folder, so epochs never decode a PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file
from tqdm import tqdm

from xray_generator.data.datasets import augment_batch, load_images_uint8
from xray_generator.data.manifest import load_manifest
from xray_generator.distributed import check_launch
from xray_generator.evaluation.fidelity import bootstrap_ci
from xray_generator.io import atomic_save_safetensors, atomic_write_text
from xray_generator.models.classifier import (
    CONFIG_NAME,
    LABEL_SCOPES,
    WEIGHTS_NAME,
    annotating_sources,
    build_classifier,
    cached_split_images,
    head_targets,
    label_slug,
    load_classifier,
    predict_cached,
)
from xray_generator.paths import cache_dir as default_cache_dir
from xray_generator.precision import note_training_precision, training_mixed_precision
from xray_generator.training.checkpointing import (
    EMA, CheckpointDir, CheckpointSchedule, LossLog, add_train_command, agreed, check_ranks_agree, process_slice,
)
from xray_generator.weights import replace_folder_atomically, write_manifest

METRICS_NAME = "test_metrics.json"
CARD_NAME = "README.md"
# Within one source, a label's AUROC is reported only when both classes have this many test images.
MIN_CLASS_PER_SOURCE = 5


def load_config(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def log_fields(labels: tuple[str, ...]) -> list[str]:
    return ["step", "samples_seen", "wall_seconds", "loss", "lr", "val_loss", "val_auroc_mean"] + [f"val_auroc_{label_slug(l)}" for l in labels]


# ---------------------------------------------------------------------------- data
def masked_bce(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known targets; `pos_weight` = negatives / positives per label (imbalance)."""
    per_target = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    return (per_target * known).sum() / known.sum().clamp(min=1)


def label_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """AUROC of one label's scores; ValueError when the sample holds one class (bootstrap skips it)."""
    from sklearn.metrics import roc_auc_score

    if targets.min() == targets.max():
        raise ValueError("AUROC needs both classes")
    return float(roc_auc_score(targets, scores))


# ---------------------------------------------------------------------------- training
def train_classifier(config: dict, run_dir: str | Path, resume: bool = False, max_minutes: float | None = None, data_dir: str | Path | None = None) -> dict:
    train_cfg, data_cfg, model_cfg = config["train"], config["data"], config["model"]
    torch.set_num_threads(train_cfg.get("num_threads", torch.get_num_threads()))
    torch.manual_seed(train_cfg.get("seed", 0))
    check_launch()
    accelerator = Accelerator(mixed_precision=training_mixed_precision(train_cfg.get("mixed_precision", "bf16")), cpu=not torch.cuda.is_available())
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(data_dir)
    splits = {name: manifest.query(split=name) for name in ("train", "val")}
    if data_cfg.get("max_images"):
        for part in splits.values():
            part.table = part.table.iloc[: data_cfg["max_images"]]
    scope = model_cfg.get("label_scope", "all_sources")
    if scope not in LABEL_SCOPES:
        raise ValueError(f"model.label_scope must be one of {LABEL_SCOPES}, got {scope!r}")
    if scope == "annotating_sources" and "annotated_sources" not in model_cfg:
        # Fixed from the train split and saved with the config, so validation, a resumed run and
        # the exported model's evaluation mask the same targets.
        model_cfg["annotated_sources"] = annotating_sources(splits["train"], model_cfg["labels"])
    if accelerator.is_main_process:
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    size, mean, std = model_cfg["input_size"], float(model_cfg["mean"]), float(model_cfg["std"])
    cache_root = Path(config.get("cache_dir") or default_cache_dir() / "classifier")
    with accelerator.main_process_first():  # the main process fills the cache; the others then read it
        images = {name: cached_split_images(part, size, cache_root) for name, part in splits.items()}
    model = build_classifier(config)
    labels = model.labels
    targets, known = {}, {}
    for name, part in splits.items():
        t, k = head_targets(part, model_cfg)
        targets[name], known[name] = torch.from_numpy(t), torch.from_numpy(k.astype(np.float32))
    positives = (targets["train"] * known["train"]).sum(0)
    negatives = known["train"].sum(0) - positives
    if (positives == 0).any():
        raise ValueError(f"labels without a positive training image: {[l for l, p in zip(labels, positives) if p == 0]}")
    pos_weight = (negatives / positives).clamp(min=train_cfg.get("min_pos_weight", 0.05), max=train_cfg.get("max_pos_weight", 20.0))

    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg.get("weight_decay", 0.01))
    ema = EMA(model, train_cfg.get("ema_decay", 0.999))
    best = {k: v.clone() for k, v in ema.state_dict().items()}
    ckpt = CheckpointDir(run_dir)
    log = LossLog(run_dir / "log.csv", log_fields(labels))
    state = {"step": 0, "samples_seen": 0, "wall_seconds": 0.0, "best_step": None, "best_val_auroc_mean": None}
    if resume and (latest := ckpt.latest()) is not None:
        modules, state = ckpt.load(latest, {"optimizer": opt})
        model.load_state_dict(modules["model"])
        ema.load_state_dict(modules["ema"])
        best = modules["best"]
        if accelerator.is_main_process:
            log.truncate_after(state["step"])
        print(f"resumed from {latest.name}: step {state['step']}, {state['samples_seen']} samples", flush=True)
    model = model.to(memory_format=torch.channels_last)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        # BatchNorm over the global batch, as one process would compute it (SyncBatchNorm works on GPUs only;
        # on CPU processes each normalises its own slice, so the per-process batch should not be tiny).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model, opt = accelerator.prepare(model, opt)
    # Seeded by the step, so a resumed run draws fresh batches rather than replaying the first ones; the same on
    # every process, which draws (and augments) the global batch and trains on its slice.
    rng = np.random.default_rng((train_cfg.get("seed", 0), state["step"]))
    mine = process_slice(accelerator, train_cfg["batch_size"])
    val_limit = train_cfg.get("val_images") or len(images["val"])
    val_images, val_targets, val_known = images["val"][:val_limit], targets["val"][:val_limit].numpy(), known["val"][:val_limit].numpy().astype(bool)

    def validate() -> dict:
        shadow = build_classifier(config)
        ema.copy_to(shadow)
        logits, probs = predict_cached(shadow, val_images, mean, std)
        loss = masked_bce(torch.from_numpy(logits), torch.from_numpy(val_targets), torch.from_numpy(val_known.astype(np.float32)), pos_weight).item()
        aurocs = {}
        for j, label in enumerate(labels):
            rows = val_known[:, j]
            try:
                aurocs[label] = label_auroc(probs[rows, j], val_targets[rows, j])
            except ValueError:  # one class only among the val images (possible on the sample)
                aurocs[label] = None
        defined = [v for v in aurocs.values() if v is not None]
        return {"loss": loss, "auroc": aurocs, "auroc_mean": float(np.mean(defined)) if defined else None}

    max_steps = train_cfg["max_steps"]
    schedule = CheckpointSchedule(train_cfg["checkpoint_minutes"], max_minutes, state["wall_seconds"])
    n_train = len(images["train"])
    bar = tqdm(total=max_steps, initial=state["step"], desc="classifier", dynamic_ncols=True, mininterval=10, disable=not accelerator.is_main_process)
    while state["step"] < max_steps:
        step = state["step"]
        rows = torch.from_numpy(rng.integers(0, n_train, train_cfg["batch_size"] * accelerator.num_processes))
        x = augment_batch(images["train"][rows, None].float() / 255.0, rng, config.get("augment", {}))
        x, rows = ((x[mine] - mean) / std).contiguous(memory_format=torch.channels_last), rows[mine]
        lr = train_cfg["lr"] * min(1.0, (step + 1) / train_cfg.get("warmup_steps", 1))
        # Cosine decay to `final_lr_fraction`: the last steps of a fixed-length run settle.
        floor = train_cfg.get("final_lr_fraction", 0.05)
        lr *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / max_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        with accelerator.autocast():
            logits = model(x)
        loss = masked_bce(logits.float(), targets["train"][rows], known["train"][rows], pos_weight)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(accelerator.unwrap_model(model), step)
        state["step"] += 1
        state["samples_seen"] += len(rows) * accelerator.num_processes
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")

        val = None
        out_of_time = agreed(accelerator, schedule.out_of_time())
        if schedule.due(finished=state["step"] >= max_steps) and accelerator.is_main_process:
            val = validate()
            if val["auroc_mean"] is not None and (state["best_val_auroc_mean"] is None or val["auroc_mean"] > state["best_val_auroc_mean"]):
                best = {k: v.clone() for k, v in ema.state_dict().items()}
                state["best_step"], state["best_val_auroc_mean"] = state["step"], val["auroc_mean"]
            state["wall_seconds"] = schedule.wall_seconds()
            note_training_precision(state, accelerator.mixed_precision)
            state["val_loss"], state["val_auroc"] = val["loss"], val["auroc"]
            ckpt.save(
                state["step"],
                {"model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(), "best": best},
                {**state, "pos_weight": dict(zip(labels, pos_weight.tolist())), "n_train": n_train, "n_val": len(val_images)},
                {"optimizer": opt},
            )
            schedule.saved()
            shown = ", ".join(f"{l} {v:.3f}" for l, v in val["auroc"].items() if v is not None)
            print(f"\nstep {state['step']}: val loss {val['loss']:.4f}, AUROC ({shown}) (EMA, n={len(val_images)})", flush=True)
        if accelerator.is_main_process and (state["step"] % train_cfg.get("log_every", 10) == 0 or val is not None):
            row = {
                "step": state["step"], "samples_seen": state["samples_seen"],
                "wall_seconds": round(schedule.wall_seconds(), 1), "loss": loss.item(), "lr": lr,
                "val_loss": val["loss"] if val else "", "val_auroc_mean": _blank(val["auroc_mean"]) if val else "",
            }
            row.update({f"val_auroc_{label_slug(l)}": (_blank(val["auroc"][l]) if val else "") for l in labels})
            log.append(row)
        if out_of_time:
            break
    bar.close()
    check_ranks_agree(accelerator, {"model": accelerator.unwrap_model(model)}, run_dir)
    accelerator.wait_for_everyone()  # the main process's last checkpoint is complete when any process returns
    return state


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


# ---------------------------------------------------------------------------- export
def _mean_last_losses(log_path: Path, rows: int = 50) -> float | None:
    import csv

    if not log_path.is_file():
        return None
    with open(log_path, newline="") as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle) if r.get("loss")]
    return float(np.mean(losses[-rows:])) if losses else None


def export_classifier(run_dir: str | Path, out_dir: str | Path, weights: str = "best", evaluate: bool = True, data_dir: str | Path | None = None) -> Path:
    """Write the run's chosen weights as a classifier folder: config.json, model.safetensors, MANIFEST.json.

    `weights` is "best" (the EMA snapshot with the best mean val AUROC) or "ema" (the latest EMA).
    With `evaluate`, the test-split model card and metrics are written before the folder is
    swapped into place, so `out_dir` is never half-written.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = load_config(run_dir / "config.json")
    latest = CheckpointDir(run_dir).latest()
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    if weights not in ("best", "ema"):
        raise ValueError(f"weights must be 'best' or 'ema', got {weights!r}")
    state = json.loads((latest / "state.json").read_text())
    model = build_classifier(config)
    ema = EMA(model)
    ema.load_state_dict(load_file(str(latest / f"{weights}.safetensors")))
    ema.copy_to(model)

    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    exported = {
        "model": {**config["model"], "feature_dim": model.feature_dim, "labels": list(model.labels)},
        "augment": config.get("augment", {}),
        "train": config["train"],
        "training": {
            "weights": "EMA snapshot with the best mean val AUROC" if weights == "best" else "latest EMA",
            "steps": state["step"],
            "samples_seen": state["samples_seen"],
            "wall_seconds": state["wall_seconds"],
            "best_step": state.get("best_step"),
            "best_val_auroc_mean": state.get("best_val_auroc_mean"),
            "final_train_loss_mean_last_50_logged": _mean_last_losses(run_dir / "log.csv"),
            "final_val_loss": state.get("val_loss"),
            "final_val_auroc": state.get("val_auroc"),
            "n_train": state.get("n_train"),
            "n_val": state.get("n_val"),
            "pos_weight": state.get("pos_weight"),
        },
    }
    atomic_write_text(staging / CONFIG_NAME, json.dumps(exported, indent=2) + "\n")
    atomic_save_safetensors(model.state_dict(), staging / WEIGHTS_NAME)
    write_manifest(staging)
    if evaluate:
        evaluate_classifier(staging, data_dir=data_dir, n_boot=config.get("evaluation", {}).get("n_boot", 1000), title=out_dir.name)
    replace_folder_atomically(staging, out_dir)
    return out_dir


# ---------------------------------------------------------------------------- evaluation
def _auroc_with_ci(scores: np.ndarray, targets: np.ndarray, n_boot: int, seed: int) -> dict:
    n_pos = int(targets.sum())
    result = {"n_pos": n_pos, "n_neg": int(len(targets) - n_pos)}
    if n_pos == 0 or n_pos == len(targets):
        return {**result, "auroc": None, "ci_low": None, "ci_high": None}
    ci = bootstrap_ci(label_auroc, [scores, targets], n_boot=n_boot, seed=seed, paired=True)
    return {**result, "auroc": ci["value"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n_boot_valid": ci["n_boot_valid"]}


def evaluate_classifier(weights_dir: str | Path, data_dir: str | Path | None = None, split: str = "test", n_boot: int = 1000, title: str | None = None) -> dict:
    """Per-label AUROC on `split` with percentile-bootstrap 95% CIs; writes the model card.

    Writes `test_metrics.json` and `README.md` into `weights_dir` (atomically), then refreshes
    its MANIFEST.json. AUROCs are also given within each source, because source and label are
    entangled in this data: a pooled AUROC partly measures recognising the source.
    """
    weights_dir = Path(weights_dir)
    loaded = load_classifier(weights_dir)
    manifest = load_manifest(data_dir)
    part = manifest.query(split=split)
    if len(part) == 0:
        raise ValueError(f"no {split} images in {manifest.root}")
    images = [image.astype(np.float32) / 255.0 for image in load_images_uint8(part)]
    started = time.time()
    probs = loaded.predict_proba(images)
    inference_seconds = time.time() - started
    targets, known = head_targets(part, loaded.config["model"])
    sources = part.table["source"].astype(str).to_numpy()
    per_label = {}
    for j, label in enumerate(loaded.labels):
        rows = known[:, j]
        entry = _auroc_with_ci(probs[rows, j], targets[rows, j], n_boot, seed=j)
        entry["by_source"] = {}
        for source in sorted(set(sources[rows])):
            inside = rows & (sources == source)
            n_pos = int(targets[inside, j].sum())
            if min(n_pos, int(inside.sum()) - n_pos) >= MIN_CLASS_PER_SOURCE:
                entry["by_source"][source] = _auroc_with_ci(probs[inside, j], targets[inside, j], n_boot, seed=j)
        per_label[label] = entry
    metrics = {
        "split": split,
        "data": manifest.root.name,
        "n_images": len(part),
        "n_images_by_source": {s: int((sources == s).sum()) for s in sorted(set(sources))},
        "ci": "95% percentile bootstrap, images resampled with their labels",
        "n_boot": n_boot,
        "inference_seconds": round(inference_seconds, 1),
        "feature_extractor": loaded.feature_extractor.settings,
        "training": loaded.config.get("training", {}),
        "labels": per_label,
    }
    atomic_write_text(weights_dir / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(weights_dir / CARD_NAME, model_card(metrics, loaded.config, title or weights_dir.name))
    write_manifest(weights_dir)
    return metrics


def _fmt_auroc(entry: dict) -> str:
    if entry.get("auroc") is None:
        return "n/a (one class)"
    return f"{entry['auroc']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def model_card(metrics: dict, config: dict, title: str) -> str:
    """README.md text from the measured numbers; nothing in it is typed by hand."""
    model_cfg, training, train_cfg = config["model"], config.get("training", {}), config.get("train", {})

    def number(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [
        f"# {title}: chest X-ray classifier (domain feature space)",
        "",
        "**Research use only. Not for clinical use.** Trained by us from random initialisation on CPU;",
        "no pretrained weights. Its penultimate features are the project's domain feature space for",
        "distribution metrics on radiographs (`load_classifier(folder).feature_extractor`).",
        "",
        "## Model",
        "",
        f"- torchvision `{model_cfg.get('arch', 'resnet18')}`, 1-channel input {model_cfg['input_size']}×{model_cfg['input_size']} px "
        f"(bilinear, antialiased resize), normalised as (x − {model_cfg['mean']}) / {model_cfg['std']} with x in [0, 1].",
        f"- Penultimate features: {model_cfg.get('feature_dim')}-d (global average pool). Heads (sigmoid, multi-label): "
        + ", ".join(model_cfg["labels"]) + ".",
        "- `Pediatric` is derived from the metadata (every Kermany image, or a recorded age under 18), not a finding.",
        *(
            ["- Label scope: each finding head learns only from sources that record it: "
             + "; ".join(f"{label}: {', '.join(sources)}" for label, sources in model_cfg["annotated_sources"].items()) + "."]
            if model_cfg.get("annotated_sources") else []
        ),
        f"- Feature extractor settings: `{json.dumps(metrics['feature_extractor'], sort_keys=True)}`",
        "",
        "## Training",
        "",
        f"- Data: train split of `{metrics['data']}` ({number(training.get('n_train'), 'd')} images); "
        f"checkpoint chosen on the val split ({number(training.get('n_val'), 'd')} images) by mean val AUROC of the EMA weights.",
        f"- Steps: {number(training.get('steps'), 'd')} (batch {train_cfg.get('batch_size')}), samples seen: {number(training.get('samples_seen'), ',')}, "
        f"wall time: {number((training.get('wall_seconds') or 0) / 60, '.1f')} min on CPU.",
        f"- Exported weights: {training.get('weights')} (step {training.get('best_step')}, mean val AUROC {number(training.get('best_val_auroc_mean'), '.3f')}).",
        f"- Final train loss (mean of the last 50 logged steps, augmented, pos-weighted BCE): {number(training.get('final_train_loss_mean_last_50_logged'), '.4f')}; "
        f"final val loss: {number(training.get('final_val_loss'), '.4f')}.",
        "- Augmentation: small rotation, zoom/crop, shift, gamma, brightness and contrast jitter; never a left-right flip (dextrocardia).",
        "- Class imbalance: BCE with pos_weight = negatives / positives per label on the train split: "
        + ", ".join(f"{l} {w:.2f}" for l, w in (training.get("pos_weight") or {}).items()) + ".",
        "",
        f"## Test AUROC ({metrics['split']} split, {metrics['n_images']} images, {metrics['ci']}, {metrics['n_boot']} resamples)",
        "",
        "| label | AUROC [95% CI] | n_pos | n_neg |",
        "|:--|--:|--:|--:|",
    ]
    for label, entry in metrics["labels"].items():
        lines.append(f"| {label} | {_fmt_auroc(entry)} | {entry['n_pos']} | {entry['n_neg']} |")
    lines += [
        "",
        f"Images without any recorded finding are left out of the finding rows (not counted as negatives).",
        "",
        f"### Within one source (where both classes have at least {MIN_CLASS_PER_SOURCE} test images)",
        "",
        "| label | source | AUROC [95% CI] | n_pos | n_neg |",
        "|:--|:--|--:|--:|--:|",
    ]
    within = [(label, source, e) for label, entry in metrics["labels"].items() for source, e in entry["by_source"].items()]
    lines += [f"| {label} | {source} | {_fmt_auroc(e)} | {e['n_pos']} | {e['n_neg']} |" for label, source, e in within] or ["| (none) | | | | |"]
    lines += [
        "",
        "## Caveat: source and label are entangled",
        "",
        "In this data all Kermany images are paediatric AP films and supply almost every Normal,",
        "Bacterial and Viral pneumonia image, while COVID-19 comes only from adult COVID sources; the",
        "224-px Kermany JPEGs also differ in resolution, geometry and compression. A classifier can score",
        "well by recognising the source (child vs adult ICU film, JPEG vs PNG) rather than the finding,",
        "so the pooled AUROCs above partly measure source recognition. The within-source rows are the",
        "better guide to what the model sees in the lungs. Its features inherit the same bias: a",
        "distance in this space mixes finding, age group and source.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub, help="train (or resume) the classifier")
    export = sub.add_parser("export", help="write the chosen weights as a classifier folder, then evaluate on the test split")
    export.add_argument("--run", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--weights", choices=("best", "ema"), default="best", help="best val AUROC EMA snapshot (default) or the latest EMA")
    export.add_argument("--no-evaluate", action="store_true", help="skip the test-split model card")
    export.add_argument("--data-dir", default=None)
    evaluate = sub.add_parser("evaluate", help="per-label test AUROC with bootstrap CIs; writes README.md and test_metrics.json")
    evaluate.add_argument("--weights", required=True, help="an exported classifier folder")
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.command == "train":
        train_classifier(load_config(args.config), args.run, resume=args.resume, max_minutes=args.max_minutes, data_dir=args.data_dir)
    elif args.command == "export":
        print(export_classifier(args.run, args.out, weights=args.weights, evaluate=not args.no_evaluate, data_dir=args.data_dir))
    else:
        metrics = evaluate_classifier(args.weights, data_dir=args.data_dir, n_boot=args.n_boot)
        for label, entry in metrics["labels"].items():
            print(f"{label}: {_fmt_auroc(entry)} (n_pos {entry['n_pos']}, n_neg {entry['n_neg']})")


if __name__ == "__main__":
    main()
