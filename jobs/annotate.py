"""Entry point for `ray job submit --working-dir . -- python jobs/annotate.py IN... --output OUT`.

Same arguments as `fer-batch annotate`; under `ray job submit`, RAY_ADDRESS points the
job at the cluster it was submitted to.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_batch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["annotate", *sys.argv[1:]]))
