"""The seed design's name for the evaluation: a thin alias of `python -m xray_generator evaluate`.

    python scripts/extract_metrics.py --model ldm --n 1000
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xray_generator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
