"""``python dataset.py validate ANNOTATION ...``: a thin entry point (the same command as ``video-gemma validate``).

The names this module held are importable from here for scripts run from a checkout; the library is
`gemma3.data` (formats, plugins, dataset, validate; the wheel installs only the ``gemma3`` package; see
docs/architecture.md).
"""

import sys

from gemma3.cli import main as _cli_main
from gemma3.data.dataset import *  # noqa: F401,F403
from gemma3.data.formats import *  # noqa: F401,F403
from gemma3.data.plugins import *  # noqa: F401,F403
from gemma3.data.validate import *  # noqa: F401,F403


def main(argv: list[str] | None = None) -> int:
    """``dataset.py validate ...`` -> ``video-gemma validate ...``."""
    return _cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
