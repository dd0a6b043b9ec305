"""Top-level name kept for scripts and notebooks run from a checkout: the library module is `gemma3.constants`
(the wheel installs only the ``gemma3`` package; see docs/architecture.md)."""

from gemma3.constants import *  # noqa: F401,F403
