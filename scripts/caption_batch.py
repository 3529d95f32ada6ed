"""Caption folders, globs or file lists into JSONL, CSV or COCO results JSON: ``caption batch`` as a script.

    python scripts/caption_batch.py photos/ --out captions.jsonl [--model NAME] [--batch-size 32]

Re-running with the same --out resumes; see ``caption batch --help`` for every option.
"""

import sys

from caption.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
