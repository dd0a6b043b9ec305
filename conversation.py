"""Top-level name kept for scripts and notebooks run from a checkout: chat templates and one-pass label masking
live in `gemma3.data.template` (the wheel installs only the ``gemma3`` package; see docs/architecture.md)."""

from gemma3.data.template import *  # noqa: F401,F403
