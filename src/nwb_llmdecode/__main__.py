"""``python -m nwb_llmdecode``: the command line (also ``accelerate launch -m nwb_llmdecode``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
