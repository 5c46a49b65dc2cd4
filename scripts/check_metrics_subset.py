"""Recompute the committed metrics on a 200-image subset and check they agree within their CIs.

    python scripts/check_metrics_subset.py                                # outputs/metrics/ldm.json, n = 200
    python scripts/check_metrics_subset.py --metrics outputs/metrics/ldm.json --n 200

A thin wrapper of `xray_generator.evaluation.subset_check` (its docstring says what is compared
and how). Exit code 1 when a checked metric disagrees.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xray_generator.evaluation.subset_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
