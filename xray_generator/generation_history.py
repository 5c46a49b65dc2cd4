"""The Generate page's history: the last results of one browser tab, with the settings that made them.

A history entry keeps the request (prompt, sampler, steps, guidance, seed, ...), a small thumbnail
and a fingerprint (sha256) of each image, not the images themselves: 24 entries of up to 8 upscaled
images would hold hundreds of MB per tab. Restoring an entry puts its settings and seed back into
the page's widgets; generating again reproduces the images, and `matching_entry` tells the page
which earlier entry a new result is byte-identical to.

No Streamlit here: the page keeps the list in `st.session_state` and calls these functions.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

HISTORY_LIMIT = 24
THUMBNAIL_SIDE = 96

# Generate-page widget key -> GenerationRequest field. Restoring writes these keys.
RESTORED_SETTINGS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "sampler": "sampler",
    "steps": "steps",
    "guidance": "guidance",
    "guidance_fraction": "guidance_fraction",
    "seed": "seed",
    "num_images": "num_images",
    "resolution": "resolution",
    "preset": "preset",
}


def image_fingerprint(image: np.ndarray) -> str:
    """sha256 of the 8-bit pixels as shown and downloaded: equal fingerprints mean byte-identical images."""
    from xray_generator.io import to_uint8

    pixels = np.ascontiguousarray(to_uint8(image))
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def thumbnail_of(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """float32 (side, side') thumbnail in [0, 1] (the library's image convention), area-averaged, aspect kept."""
    import cv2

    height, width = image.shape
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.clip(cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_AREA), 0.0, 1.0)


@dataclass(frozen=True)
class HistoryEntry:
    """One Generate click: its settings (widget key -> value), a thumbnail and each image's fingerprint."""

    number: int  # 1 for the tab's first generation, counting up; stays with the entry as older ones drop out
    settings: dict[str, Any]
    thumbnail: np.ndarray
    fingerprints: tuple[str, ...]
    caption: str  # the first image's caption (SYNTHETIC, seed, size, preset)
    seconds: float
    created_at: str

    @property
    def label(self) -> str:
        prompt = self.settings["prompt"]
        short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        count = len(self.fingerprints)
        return f"#{self.number} · seed {self.settings['seed']} · {count} image{'s' if count != 1 else ''} · {short}"

    def describe(self) -> str:
        s = self.settings
        return (f"{s['sampler']} · {s['steps']} steps · guidance {s['guidance']:g} (share {s['guidance_fraction']:g}) · "
                f"{s['resolution']} px · preset {s['preset']}" + (f" · negative: {s['negative_prompt']}" if s["negative_prompt"] else ""))


def entry_from_result(request, result, number: int) -> HistoryEntry:
    """A history entry for `result`, made from `request` (a studio.GenerationRequest with its resolved seed).

    Settings the request left to the pipeline (sampler, steps, guidance as None) are taken from the
    first image's metadata, so a restored entry is explicit and does not depend on later defaults.
    """
    if not result.images:
        raise ValueError("a generation without images cannot go into the history")
    metadata = result.images[0].metadata
    settings = {key: getattr(request, field) for key, field in RESTORED_SETTINGS.items()}
    for key, meta_key in (("sampler", "sampler"), ("steps", "steps"), ("guidance", "guidance"),
                          ("guidance_fraction", "guidance_fraction")):
        if settings[key] is None and meta_key in metadata:
            settings[key] = metadata[meta_key]
    return HistoryEntry(
        number=int(number),
        settings=settings,
        thumbnail=thumbnail_of(result.images[0].image),
        fingerprints=tuple(image_fingerprint(item.image) for item in result.images),
        caption=result.images[0].caption,
        seconds=float(result.seconds),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def add_entry(history: Sequence[HistoryEntry], entry: HistoryEntry, limit: int = HISTORY_LIMIT) -> list[HistoryEntry]:
    """A new list, newest first, at most `limit` long (the oldest entries drop out)."""
    if limit < 1:
        raise ValueError(f"the history limit must be at least 1, got {limit}")
    return [entry, *history][:limit]


def next_number(history: Sequence[HistoryEntry]) -> int:
    return max((entry.number for entry in history), default=0) + 1


def restored_widget_values(entry: HistoryEntry, allowed_presets: Sequence[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(widget key -> value to put into the session state, notices) for restoring `entry`.

    The seed mode becomes "Fixed" so that the next click reproduces the entry. A preset that no
    longer exists (a saved preset deleted since) falls back to "None", with a notice.
    """
    values = dict(entry.settings)
    values["seed_mode"] = "Fixed"
    notices = []
    if allowed_presets is not None and values["preset"] not in allowed_presets:
        notices.append(f"The preset {values['preset']!r} of #{entry.number} is no longer available; restored without it.")
        values["preset"] = "None"
    return values, notices


def matching_entry(history: Sequence[HistoryEntry], fingerprints: Sequence[str], exclude: int | None = None) -> HistoryEntry | None:
    """The most recent entry (other than number `exclude`) whose images are byte-identical to `fingerprints`."""
    wanted = tuple(fingerprints)
    for entry in history:
        if entry.number != exclude and entry.fingerprints == wanted:
            return entry
    return None
