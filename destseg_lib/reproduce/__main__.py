"""``python -m destseg_lib.reproduce`` = ``destseg reproduce``; ``_execute RUN_DIR`` runs one run folder."""
import sys

from .cli import main

sys.exit(main())
