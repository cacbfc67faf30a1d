"""Entry point for `ray job submit --working-dir . -- python jobs/evaluate.py DATA --model M`.

Same arguments as `fer-batch evaluate`; evaluation runs in the job's driver process.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_batch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
