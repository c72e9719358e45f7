"""`python tuning/sweep.py` runs stage 3, the sweep (its code: tuning/search.py).
No module imports this file; it only runs the stage.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # The repository, not this file's folder, goes first on the path: `pipeline.*` and `model.*`
    # import from there, and nothing in this folder shadows a top-level module.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from tuning.search import main

    sys.exit(main())
