"""Where does an autoencoder's round trip lose the realism test? Counterfactual diagnostics, never output.

    python docs/realism_diagnostics.py weights/autoencoder_f8c16 [--json outputs/metrics/autoencoder_candidates/diagnostics_f8c16.json]

The round trip of the realism test (real films of patient half B through the autoencoder, judged
against half A; `xray_generator/evaluation/realism.py`) is edited in ways no generator may use, and
judged again with the same C2ST, to say what the decoder would have to do to pass:

* "original above f": the round trip with every Fourier coefficient above f cycles per pixel replaced
  by the original film's. If this passes, what is missing sits above f and nothing below it gives
  the round trip away.
* "mean radial gain": one fixed linear filter (the ratio of the real films' mean power spectrum to the
  round trip's, per ring) applied to every image: what a decoder that only under-sharpens would gain
  from sharpening.
* "unsharp mask": the round trip plus 0.5 x (itself minus a Gaussian blur of sigma 1.5 px).

These edits use the original films or sharpen after decoding. They are measurements of the gap,
never a way to produce images; the realism test itself judges only the raw decoder output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from xray_generator.evaluation import realism
from xray_generator.io import atomic_write_text

CUTS = (0.375, 0.25, 0.125)


def _eight_bit(images: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def counterfactuals(originals: np.ndarray, roundtrip: np.ndarray, real_a: np.ndarray) -> dict[str, np.ndarray]:
    """The edited round trips, by name (each 8-bit, like a saved PNG)."""
    size = roundtrip.shape[-1]
    frequency = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(frequency, frequency, indexing="ij"))
    ring = np.clip(np.rint(radius * size).astype(int), 0, size // 2)
    spectrum_rt, spectrum_orig = np.fft.fft2(roundtrip), np.fft.fft2(originals)
    edited = {"round trip as decoded": roundtrip}
    for cut in CUTS:
        edited[f"original above {cut} cycles/px"] = np.real(np.fft.ifft2(np.where(radius >= cut, spectrum_orig, spectrum_rt)))

    def ring_power(images: np.ndarray) -> np.ndarray:
        spectra = np.abs(np.fft.fft2(images)) ** 2
        return np.mean([np.bincount(ring.ravel(), s.ravel(), size // 2 + 1) for s in spectra], axis=0)

    gain = np.sqrt(ring_power(real_a) / np.maximum(ring_power(roundtrip), 1e-12))
    gain[0] = 1.0
    edited["mean radial gain (one linear filter)"] = np.real(np.fft.ifft2(spectrum_rt * gain[ring]))
    blurred = np.stack([cv2.GaussianBlur(image, (0, 0), 1.5) for image in roundtrip])
    edited["unsharp mask (sigma 1.5, amount 0.5)"] = roundtrip + 0.5 * (roundtrip - blurred)
    return {name: _eight_bit(images) for name, images in edited.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("autoencoder", help="an AutoencoderKL folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the table here as JSON")
    args = parser.parse_args(argv)

    sets, _, weights_sha256 = realism.judged_sets("ldm", True, 0, args.seed, autoencoder=args.autoencoder)
    real = np.stack(sets.real)
    real_a, originals = real[sets.in_half_a], real[~sets.in_half_a]
    patients_a = sets.real_patients[sets.in_half_a]
    frequency, power_a = realism.radial_power_spectrum(real_a)
    features_a = realism.realism_features(real_a, (frequency, power_a))
    rows = []
    for name, images in counterfactuals(originals, np.stack(sets.other), real_a).items():
        _, power = realism.radial_power_spectrum(images)
        test = realism.classifier_two_sample_test(features_a, realism.realism_features(images, (frequency, power)),
                                                  patients_a, sets.other_groups, seed=args.seed)
        psnr = float(np.mean([10 * np.log10(1.0 / max(np.mean((o - i) ** 2), 1e-12)) for o, i in zip(originals, images)]))
        gaps = realism.spectrum_band_gaps(power_a, power, frequency)
        rows.append({"round trip": name, "c2st": test["value"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
                     "n_per_set": test["n_per_set"], "worst_band_gap": gaps["value"], "psnr_db_all_held_out": psnr})
        print(f"{name:42s} C2ST {test['value']:.3f} [{test['ci_low']:.3f}, {test['ci_high']:.3f}]  "
              f"worst band gap {gaps['value']:.2f}  PSNR {psnr:.2f} dB", flush=True)
    if args.json:
        document = {"autoencoder": args.autoencoder, "weights_sha256": weights_sha256, "seed": args.seed,
                    "note": "counterfactual edits of the round trip for diagnosis only; never applied to any output", "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.json), json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
