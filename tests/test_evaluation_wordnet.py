"""Offline WordNet for METEOR: the lexnames file, the copy, and an install that never breaks the caller."""

from __future__ import annotations

import pytest

from flythinker_pl.evaluation import wordnet


def test_lexnames_follow_wordnet_order_and_format():
    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"


@pytest.mark.skipif(wordnet.wordnet_unavailable_reason() is not None, reason="WordNet is not installed")
@pytest.mark.parametrize(
    "synset, lexname",
    [
        ("dog.n.01", "noun.animal"),
        ("entity.n.01", "noun.Tops"),
        ("rain.v.01", "verb.weather"),
        ("eat.v.01", "verb.consumption"),
        ("quickly.r.01", "adv.all"),
        ("good.a.01", "adj.all"),
    ],
)
def test_installed_wordnet_reads_lexicographer_files(synset, lexname):
    from nltk.corpus import wordnet as nltk_wordnet

    assert nltk_wordnet.get_version() == "3.0" and nltk_wordnet.synset(synset).lexname() == lexname


@pytest.mark.skipif(not (wordnet.DEBIAN_DIR / "index.sense").exists(), reason="Debian WordNet packages absent")
def test_copy_makes_regular_files_and_lexnames(tmp_path):
    target = wordnet.copy_debian_wordnet(tmp_path / "corpora" / "wordnet")
    for name in ("data.noun", "index.sense", "verb.exc", "lexnames"):
        assert (target / name).is_file() and not (target / name).is_symlink()
    assert (target / "lexnames").read_text() == wordnet.lexnames_text()


def test_install_is_a_no_op_when_present(monkeypatch, tmp_path):
    (tmp_path / "corpora" / "wordnet").mkdir(parents=True)
    (tmp_path / "corpora" / "wordnet" / "lexnames").write_text(wordnet.lexnames_text())
    monkeypatch.setattr("nltk.data.path", [str(tmp_path)])
    monkeypatch.setattr(wordnet, "_apt_install", lambda: pytest.fail("apt-get must not run"))
    assert wordnet.install().startswith("WordNet: already available")


def test_install_without_root_reports_and_does_not_raise(monkeypatch, tmp_path):
    monkeypatch.setattr("nltk.data.path", [str(tmp_path)])
    monkeypatch.setattr(wordnet, "DEBIAN_DIR", tmp_path / "no-debian-wordnet")
    monkeypatch.setattr(wordnet.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(wordnet.shutil, "which", lambda name: f"/usr/bin/{name}")
    message = wordnet.install(tmp_path)
    assert "NOT installed" in message and "needs root" in message and "METEOR" in message
    assert not (tmp_path / "corpora").exists()
