"""`python pipeline/prepare.py` runs stage 1, prepare (its code: pipeline/data/prepare_cli.py).
No module imports this file; it only runs the stage.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # The repository, not this file's folder, goes first on the path: `pipeline.*` and `model.*`
    # import from there, and nothing in this folder shadows a top-level module.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from pipeline.data.prepare_cli import main

    sys.exit(main())
