"""Distil the shipped UNet's many-step, guided sampling into a few-step, unguided student.

Why: a default image is 7 DPM++ steps, 2 of them guided (9 UNet passes); the same UNet at 14 steps
gives a better FID and more diverse samples but costs twice the time (README, Evaluation), and on an
AVX2-only CPU even 9 passes miss the speed issue's 0.5 s. A student that reproduces the teacher's
trajectory in a few DDIM steps, guidance baked in, needs one pass per step.

How (progressive distillation, Salimans & Ho 2022, with its teacher states taken from the teacher's own
sampling trajectories instead of noised training films, so the student learns the states it will meet):
1. `make_trajectories`: the teacher samples from seeded noise with the training prompts (DPM-Solver++,
   `teacher_steps` steps, guidance on the first few), and the latents at every timestep are kept.
2. `distil`: for the student's DDIM step from timestep t to t' (exactly as diffusers' DDIMScheduler steps),
   the target is the clean latent x0* whose DDIM step from the teacher's latent at t lands on the teacher's
   latent at t'. The student (initialised as the teacher) regresses the v that gives x0*, conditional
   prompt only: guidance is in the targets.

    python -m xray_generator.training.distil_ldm trajectories --config configs/ldm_distil_4.json --count 2048
    python -m xray_generator.training.distil_ldm train --config configs/ldm_distil_4.json --run outputs/runs/ldm_distil_4 --resume
    python -m xray_generator.training.train_ldm export --run outputs/runs/ldm_distil_4 --out outputs/candidates/ldm_distil_4
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from safetensors import safe_open
from tqdm import tqdm

from xray_generator.data.manifest import load_manifest
from xray_generator.data.prompts import prompt_variants
from xray_generator.io import atomic_save_safetensors, atomic_write_text
from xray_generator.models.autoencoder import latent_normalisation_fields
from xray_generator.pipelines.latent_diffusion import SAMPLERS, XRayDiffusionPipeline, seeded_latents
from xray_generator.precision import cpu_has_native_bf16, note_training_precision
from xray_generator.training.checkpointing import EMA, CheckpointDir, CheckpointSchedule, LossLog
from xray_generator.training.train_ldm import load_config

LOG_FIELDS = ["step", "samples_seen", "wall_seconds", "loss", "lr", "val_loss", "val_final_mse"]
TRAJECTORY_CHUNK = "trajectories-{:05d}.safetensors"


def student_steps(scheduler_config: dict, steps: int) -> list[tuple[int, int]]:
    """The student's DDIM steps as (t, t_prev) pairs, t_prev = -1 meaning the clean image.

    Taken from diffusers' DDIMScheduler itself (its timesteps, and `prev = t - T // steps`), so the
    steps trained are the steps the pipeline's "ddim" sampler takes.
    """
    scheduler = DDIMScheduler.from_config(scheduler_config, **SAMPLERS["ddim"][1])
    scheduler.set_timesteps(steps)
    jump = scheduler.config.num_train_timesteps // steps
    return [(int(t), int(t) - jump if int(t) - jump >= 0 else -1) for t in scheduler.timesteps]


def alpha_sigma(scheduler: DDIMScheduler, t: int) -> tuple[float, float]:
    """sqrt(alpha_bar), sqrt(1 - alpha_bar) at timestep t; t = -1 is the clean image (the DDIM sampler's final alpha)."""
    alpha_bar = float(scheduler.final_alpha_cumprod if t < 0 else scheduler.alphas_cumprod[t])
    return alpha_bar ** 0.5, (1.0 - alpha_bar) ** 0.5


def ddim_v_target(x_t: torch.Tensor, x_next: torch.Tensor, t_coeffs: tuple[float, float], next_coeffs: tuple[float, float]) -> torch.Tensor:
    """The v-prediction whose deterministic DDIM step from x_t (at t) lands exactly on x_next (at t').

    DDIM: x' = a' x0 + s' (x_t - a x0) / s, so x0* = (x' - (s'/s) x_t) / (a' - s' a / s), and v = (a x_t - x0*) / s.
    """
    a, s = t_coeffs
    a_next, s_next = next_coeffs
    x0 = (x_next - (s_next / s) * x_t) / (a_next - s_next * a / s)
    return (a * x_t - x0) / s


def teacher_capture_timesteps(scheduler_config: dict, teacher_steps: int) -> list[int]:
    """The timesteps the teacher's latents are kept at: its DPM-Solver++ timesteps, then -1 (the clean latent)."""
    scheduler = SAMPLERS["dpm++"][0].from_config(scheduler_config, **SAMPLERS["dpm++"][1])
    scheduler.set_timesteps(teacher_steps)
    return [int(t) for t in scheduler.timesteps] + [-1]


def training_prompts(data_dir: str | Path | None, variants: int) -> list[str]:
    """Every prompt variant of every train-split film (the UNet's own training prompts), one list."""
    table = load_manifest(data_dir).query(split="train").table
    return [p for _, row in table.iterrows() for p in prompt_variants(row, variants)]


@torch.no_grad()
def make_trajectories(config: dict, count: int, data_dir: str | Path | None = None) -> Path:
    """Sample `count` teacher trajectories into the config's trajectory folder, in chunks (resumable: done chunks are kept)."""
    teacher_cfg = config["teacher"]
    out = Path(config["trajectories"])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config["train"].get("num_threads", torch.get_num_threads()))
    pipe = XRayDiffusionPipeline.from_pretrained(config["init_from"])
    prompts = training_prompts(data_dir, config.get("prompt_variants", 6))
    steps = teacher_cfg["steps"]
    scales = [float(s) for s in teacher_cfg["scales"]] + [1.0] * (steps - len(teacher_cfg["scales"]))
    capture = teacher_capture_timesteps(dict(pipe.scheduler.config), steps)
    chunk_size = teacher_cfg.get("chunk", 32)
    size = teacher_cfg.get("size", pipe.generation_defaults["height"])  # square images, the generation size
    rng = np.random.default_rng(teacher_cfg.get("seed", 0))
    order = rng.permutation(len(prompts))  # the same prompt order every time, so resumed chunks continue it
    for chunk in tqdm(range((count + chunk_size - 1) // chunk_size), desc="teacher trajectories"):
        path = out / TRAJECTORY_CHUNK.format(chunk)
        if path.is_file():
            continue
        first = chunk * chunk_size
        members = min(chunk_size, count - first)
        # An empty prompt now and then keeps the student's unconditional branch a trained one.
        chosen = ["" if rng_for(chunk, i).random() < config.get("empty_prompt_rate", 0.05) else prompts[order[(first + i) % len(order)]]
                  for i in range(members)]
        seeds = [teacher_cfg.get("seed_base", 500_000) + first + i for i in range(members)]
        scheduler = pipe.make_scheduler("dpm++")
        scheduler.set_timesteps(steps)
        latents = seeded_latents(pipe, seeds, size, size) * scheduler.init_noise_sigma
        states, mask = pipe.guidance_text_states(chosen, None, use_guidance=True)
        kept = [latents.clone()]
        pipe.denoise(scheduler, latents, scheduler.timesteps, states, mask, guidance_scale=1.0, scale_per_step=scales,
                     after_step=lambda index, current: kept.append(current.clone()) or current)
        atomic_save_safetensors(
            {"latents": torch.stack(kept, dim=1).half(), "seeds": torch.tensor(seeds, dtype=torch.int64)}, path,
            metadata={"prompts": json.dumps(chosen), "timesteps": json.dumps(capture), "scales": json.dumps(scales), "teacher": str(config["init_from"])})
    return out


def rng_for(chunk: int, index: int) -> np.random.Generator:
    return np.random.default_rng([chunk, index])


def load_trajectories(folder: str | Path) -> tuple[torch.Tensor, list[str], list[int]]:
    """All chunks of a trajectory folder: latents (N, K, C, H, W) fp16, their prompts, and the captured timesteps."""
    latents, prompts, timesteps = [], [], None
    for path in sorted(Path(folder).glob("trajectories-*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
            latents.append(handle.get_tensor("latents"))
        prompts += json.loads(meta["prompts"])
        if timesteps is not None and json.loads(meta["timesteps"]) != timesteps:
            raise ValueError(f"{path} was sampled on other timesteps than the chunks before it")
        timesteps = json.loads(meta["timesteps"])
    if not latents:
        raise FileNotFoundError(f"no trajectories in {folder}: run `distil_ldm trajectories` first")
    return torch.cat(latents), prompts, timesteps


def distil(config: dict, run_dir: str | Path, resume: bool = False, max_minutes: float | None = None) -> dict:
    train_cfg = config["train"]
    torch.set_num_threads(train_cfg.get("num_threads", torch.get_num_threads()))
    torch.manual_seed(train_cfg.get("seed", 0))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    teacher = XRayDiffusionPipeline.from_pretrained(config["init_from"], torch_dtype=torch.float32)
    scheduler_config = dict(teacher.scheduler.config)
    # The run's config as train_ldm's exporter reads it: the teacher's architecture, schedule and text encoder.
    atomic_write_text(run_dir / "config.json", json.dumps({
        **config, "unet": {k: v for k, v in teacher.unet.config.items() if not k.startswith("_")},
        "scheduler": {k: v for k, v in scheduler_config.items() if not k.startswith("_")},
        "autoencoder": str(Path(config["init_from"]) / "vae"), "text_encoder": teacher.text_encoder.name,
        "text_max_length": teacher.text_encoder.max_length}, indent=2, default=list))

    latents, prompts, captured = load_trajectories(config["trajectories"])
    pairs = student_steps(scheduler_config, config["student_steps"])
    missing = [t for pair in pairs for t in pair if t not in captured]
    if missing:
        raise ValueError(f"the teacher's trajectories hold no latents at timesteps {sorted(set(missing))}: "
                         f"sample them with a teacher step count whose timesteps include the student's {pairs}")
    index_of = {t: captured.index(t) for t in captured}
    ddim = DDIMScheduler.from_config(scheduler_config, **SAMPLERS["ddim"][1])
    coeffs = [(alpha_sigma(ddim, t), alpha_sigma(ddim, t_next)) for t, t_next in pairs]

    # Text: the teacher's frozen projection of each distinct prompt, computed once.
    unique = sorted(set(prompts))
    prompt_index = torch.tensor([unique.index(p) for p in prompts])
    with torch.no_grad():
        states, masks = [], []
        for start in range(0, len(unique), 64):
            s, m = teacher.encode_prompt(unique[start : start + 64])
            states.append(s.bfloat16())
            masks.append(m)
        states, masks = torch.cat(states), torch.cat(masks)

    val_count = config.get("val_trajectories", 64)
    train_ids = np.arange(val_count, len(latents))
    unet = teacher.unet.float().train().requires_grad_(True)
    projection = teacher.text_projection.eval()
    for p in projection.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg.get("weight_decay", 0.0))
    ema = EMA(unet, train_cfg["ema_decay"])
    ckpt = CheckpointDir(run_dir)
    log = LossLog(run_dir / "log.csv", LOG_FIELDS)
    state = {"step": 0, "samples_seen": 0, "wall_seconds": 0.0}
    latest = ckpt.latest() if resume else None
    if latest is not None:
        modules, state = ckpt.load(latest, {"optimizer": opt})
        unet.load_state_dict(modules["unet"])
        ema.load_state_dict(modules["ema_unet"])
        log.truncate_after(state["step"])
        print(f"resumed from {latest.name}: step {state['step']}", flush=True)
    unet.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(train_cfg.get("seed", 0) + state["step"])
    native_bf16 = cpu_has_native_bf16() and train_cfg.get("mixed_precision", "bf16") == "bf16"

    def predict(model, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16):
            return model(x.to(memory_format=torch.channels_last), t, encoder_hidden_states=states[prompt_index[ids]].float(),
                         encoder_attention_mask=masks[prompt_index[ids]]).sample.float()

    def batch_targets(ids: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_t = torch.stack([latents[i, index_of[pairs[k][0]]] for i, k in zip(ids.tolist(), segments.tolist())]).float()
        x_next = torch.stack([latents[i, index_of[pairs[k][1]]] for i, k in zip(ids.tolist(), segments.tolist())]).float()
        targets = torch.stack([ddim_v_target(x_t[j], x_next[j], *coeffs[k]) for j, k in enumerate(segments.tolist())])
        return x_t, torch.tensor([pairs[k][0] for k in segments.tolist()]), targets

    @torch.no_grad()
    def validate() -> tuple[float, float]:
        """(v loss over every student step, MSE of the student's whole DDIM run against the teacher's clean latent), EMA weights."""
        shadow = copy.deepcopy(unet).eval()
        ema.copy_to(shadow)
        ids = torch.arange(val_count)
        losses = []
        for k in range(len(pairs)):
            x_t, t, target = batch_targets(ids, torch.full((val_count,), k))
            losses.append(((predict(shadow, x_t, t, ids) - target) ** 2).mean().item())
        x = latents[ids, index_of[pairs[0][0]]].float()
        for k, (t, _) in enumerate(pairs):
            (a, s), (a_next, s_next) = coeffs[k]
            v = predict(shadow, x, torch.full((val_count,), t), ids)
            x0 = a * x - s * v
            x = a_next * x0 + s_next * (x - a * x0) / s
        final = ((x - latents[ids, -1].float()) ** 2).mean().item()
        return float(np.mean(losses)), final

    schedule = CheckpointSchedule(train_cfg["checkpoint_minutes"], max_minutes, state["wall_seconds"])
    bar = tqdm(total=train_cfg["max_steps"], initial=state["step"], desc="distil", dynamic_ncols=True, mininterval=10)
    if state["step"] == 0:
        val, final = validate()
        log.append({"step": 0, "samples_seen": 0, "wall_seconds": 0.0, "loss": "", "lr": 0.0, "val_loss": val, "val_final_mse": final})
        print(f"\nstep 0 (the teacher as student): val loss {val:.4f}, whole-run latent MSE {final:.4f}", flush=True)
    while state["step"] < train_cfg["max_steps"]:
        step = state["step"]
        ids = torch.from_numpy(rng.choice(train_ids, train_cfg["batch_size"]))
        segments = torch.from_numpy(rng.integers(0, len(pairs), train_cfg["batch_size"]))
        x_t, t, target = batch_targets(ids, segments)
        lr = train_cfg["lr"] * min(1.0, (step + 1) / train_cfg.get("warmup_steps", 1))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = ((predict(unet, x_t, t, ids) - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet)  # a constant decay from the teacher: nothing random to forget
        state["step"] += 1
        state["samples_seen"] += len(ids)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = schedule.out_of_time()
        val = final = None
        if schedule.due(finished=state["step"] >= train_cfg["max_steps"]):
            val, final = validate()
            state["wall_seconds"] = schedule.wall_seconds()
            note_training_precision(state, "bf16" if native_bf16 else "no")
            normalisation = latent_normalisation_fields(teacher.vae.config)
            ckpt.save(state["step"], {"unet": unet.state_dict(), "ema_unet": ema.state_dict(),
                                      "ema_text_projection": {k: v.float() for k, v in projection.state_dict().items()}},
                      {**state, "val_loss": val, "val_final_mse": final, "latent_shift": normalisation["shift_factor"],
                       "latent_scale": normalisation["scaling_factor"], "latents_mean": normalisation["latents_mean"],
                       "latents_std": normalisation["latents_std"], "autoencoder": str(Path(config["init_from"]) / "vae")},
                      {"optimizer": opt})
            schedule.saved()
            print(f"\nstep {state['step']}: val loss {val:.4f}, whole-run latent MSE {final:.4f} (EMA), {state['wall_seconds'] / 3600:.2f} h", flush=True)
        if state["step"] % train_cfg.get("log_every", 10) == 0 or val is not None:
            log.append({"step": state["step"], "samples_seen": state["samples_seen"], "wall_seconds": round(schedule.wall_seconds(), 1),
                        "loss": loss.item(), "lr": lr, "val_loss": "" if val is None else val, "val_final_mse": "" if final is None else final})
        if out_of_time:
            break
    bar.close()
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    traj = sub.add_parser("trajectories", help="sample the teacher's trajectories (resumable)")
    traj.add_argument("--config", required=True)
    traj.add_argument("--count", type=int, required=True)
    traj.add_argument("--data-dir", default=None)
    train = sub.add_parser("train", help="train (or resume) the student")
    train.add_argument("--config", required=True)
    train.add_argument("--run", required=True)
    train.add_argument("--resume", action="store_true")
    train.add_argument("--max-minutes", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "trajectories":
        print(make_trajectories(load_config(args.config), args.count, args.data_dir))
    else:
        distil(load_config(args.config), args.run, resume=args.resume, max_minutes=args.max_minutes)


if __name__ == "__main__":
    main()
