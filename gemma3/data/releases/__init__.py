"""Dataset release layouts read directly, behind a registry (``FORMAT:ROOT[:SPLIT]``; see `base`). Importing the
package registers every layout."""

from gemma3.data.releases import action, qevd, videoqa  # noqa: F401  (registration side effect)
from gemma3.data.releases.base import (
    DEFAULT_MAX_MISSING_FRACTION,
    RELEASES,
    MissingReport,
    ReleaseError,
    ReleaseReader,
    ReleaseRecord,
    ReleaseSpec,
    get_release,
    load_release,
    parse_spec,
    register_release,
)

__all__ = [
    "DEFAULT_MAX_MISSING_FRACTION", "RELEASES", "MissingReport", "ReleaseError", "ReleaseReader", "ReleaseRecord",
    "ReleaseSpec", "get_release", "load_release", "parse_spec", "register_release",
]  # fmt: skip
