"""Top-level name kept for scripts and notebooks run from a checkout: video / image reading, frame sampling and
preprocessing live in `gemma3.data.media` (the wheel installs only the ``gemma3`` package; see
docs/architecture.md)."""

from gemma3.data.media import *  # noqa: F401,F403
