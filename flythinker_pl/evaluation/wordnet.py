"""WordNet 3.0 for METEOR with no network: copy Debian's files to where nltk looks.

nltk.download() cannot reach its server here and no PyPI package ships WordNet, but Debian's
`wordnet-base` + `wordnet-sense-index` hold WordNet 3.0 in /usr/share/wordnet. nltk 3.10 rejects
symlinked corpora, so the files are copied, and nltk also needs a `lexnames` file no package ships.

    python -m flythinker_pl.evaluation.wordnet     # idempotent; never fails the caller
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

DEBIAN_DIR = Path("/usr/share/wordnet")
DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")
# The lexicographer files in WordNet 3.0's lexnames(5) order: line i is "i<TAB>name<TAB>category".
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
LEXNAME_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}  # WordNet's syntactic category numbers


def default_nltk_data() -> Path:
    """<venv>/nltk_data: on nltk's default search path for this interpreter, so no NLTK_DATA is needed."""
    return Path(sys.prefix) / "nltk_data"


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{LEXNAME_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


@functools.lru_cache(maxsize=None)
def wordnet_unavailable_reason() -> Optional[str]:
    """None when nltk can load WordNet, else why not (reported in place of METEOR)."""
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        return (
            "WordNet is not installed for nltk (no network for nltk.download); "
            "run `make install` or `python -m flythinker_pl.evaluation.wordnet` as root"
        )
    except Exception as error:  # a broken copy: say what is wrong rather than crash scoring
        return f"WordNet could not be loaded: {error}"
    return None


def _apt_install() -> Optional[str]:
    """Install the Debian packages; returns why it could not, or None on success."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available (not a Debian/Ubuntu system)"
    if os.geteuid() != 0:
        return f"installing {' '.join(DEBIAN_PACKAGES)} needs root (apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:  # package lists may be empty
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return f"apt-get install failed: {result.stderr.strip()[-500:]}"
    return None


def copy_debian_wordnet(target: Path, source: Path = DEBIAN_DIR) -> Path:
    """Copy Debian's WordNet files into target (an nltk `corpora/wordnet` dir) and add `lexnames`."""
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file():
            shutil.copyfile(file, target / file.name)  # a copy, not a link: nltk rejects symlinks
    (target / "lexnames").write_text(lexnames_text())
    return target


def install(nltk_data: Optional[Path] = None) -> str:
    """Make WordNet 3.0 loadable by nltk; returns a one-line status. Needs no network when done."""
    import nltk

    try:  # lexnames is written last, so finding it means a complete copy (and is cheaper than loading)
        return f"WordNet: already available to nltk ({nltk.data.find('corpora/wordnet/lexnames')})"
    except LookupError:
        pass
    if not (DEBIAN_DIR / "index.sense").exists():
        problem = _apt_install()
        if problem:
            return f"WordNet NOT installed ({problem}); METEOR will be reported as unavailable"
    target = copy_debian_wordnet(Path(nltk_data or default_nltk_data()) / "corpora" / "wordnet")
    wordnet_unavailable_reason.cache_clear()
    problem = wordnet_unavailable_reason()
    if problem:
        return f"WordNet copied to {target} but nltk cannot use it ({problem}); is that on nltk.data.path?"
    return f"WordNet: installed to {target}"


if __name__ == "__main__":
    print(install(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
