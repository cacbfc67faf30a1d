"""Entry point for `ray job submit --working-dir . -- python jobs/train.py --train DATA ...`.

Same arguments as `fer-batch train`; under `ray job submit`, RAY_ADDRESS points the
job at the cluster it was submitted to.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_batch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
