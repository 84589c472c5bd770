"""`vffn-data corpus build` on fake Debian packages (--deb-dir): the .deb reader, the cleaners, the split, the
manifest, determinism, and the one-line errors with their exit codes. No network: every package of the real
catalogue is stood in for by a tiny .deb made here, with files where the catalogue's globs look."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from data_tools.cli import main
from data_tools.corpus import deb
from data_tools.corpus.catalogue import CORPORA
from data_tools.corpus.clean import clean_html, clean_pod, clean_wordnet

PROSE = ("The quick brown fox jumps over the lazy dog while the committee considers the merits of the "
         "proposal in great detail, noting every objection raised by the members present. ")


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(path, package: str, version: str, files: dict[str, bytes]) -> None:
    """A minimal but valid .deb: ar archive of debian-binary, control.tar.gz, data.tar.xz."""
    members = [("debian-binary", b"2.0\n"),
               ("control.tar.gz", _tar({"control": f"Package: {package}\nVersion: {version}\n"
                                                  "Architecture: all\nDescription: fake\n".encode()}, "w:gz")),
               ("data.tar.xz", _tar(files, "w:xz"))]
    out = bytearray(b"!<arch>\n")
    for name, blob in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}`\n".encode()
        out += blob + (b"\n" if len(blob) % 2 else b"")
    path.write_bytes(bytes(out))


def _doc(cleaner: str, i: str) -> bytes:
    text = f"Document {i}. " + PROSE * 3
    if cleaner == "html":
        return (f"<html><head><title>t</title><script>var x = 1;</script></head><body>"
                f"<div class='sphinxsidebar'>NAVIGATION</div><p>{text}</p></body></html>").encode()
    if cleaner == "pod":
        return f"=head1 NAME\n\nB<Doc{i}> - L<perlpod|perlpod/x>\n\n=cut\n\n{text}\n".encode()
    lines = [f"{j:08d} 05 n 01 word{i}_{j} 0 000 | {PROSE[:80]} {i} {j}" for j in range(60)]
    return ("  1 This software and database is being provided\n" + "\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def deb_dir(tmp_path_factory):
    """One fake .deb per package of debian-docs-en, 6 documents each, files where the globs look."""
    d = tmp_path_factory.mktemp("debs")
    for src in CORPORA["debian-docs-en"].sources:
        files = {f"usr/share/doc/{src.package}/copyright": f"License: {src.licence}\n".encode()}
        for i in range(6):
            files[src.include[0].replace("*", f"p{i}", 1).replace("*", "x")] = _doc(src.cleaner, f"{src.package}-{i}")
        make_deb(d / f"{src.package}_1.0-1_all.deb", src.package, "1.0-1", files)
    return d


def test_deb_reader_agrees_with_dpkg_deb(deb_dir, tmp_path):
    path = sorted(deb_dir.glob("*.deb"))[0]
    assert deb.read_control(path)["Version"] == "1.0-1"
    ours = dict(deb.iter_data_files(path))
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed: no independent reference")
    subprocess.run(["dpkg-deb", "-x", str(path), str(tmp_path)], check=True)
    theirs = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert ours == theirs


def test_cleaners_keep_prose_and_drop_markup():
    page = (b"<html><head><style>p{}</style><title>Title</title></head><body><nav>Home | Next</nav>"
            b"<div class='related'>prev next</div><h1>Heading</h1><p>First &amp; <b>bold</b> para.</p>"
            b"<div><div>inner</div></div><footer>(c) 2024</footer></body></html>")
    assert clean_html("a.html", page) == [("a.html", "Heading\n\nFirst & bold para.\n\ninner")]
    pod = b"=pod\n\n=head1 NAME\n\nB<perlfoo> - see L<the docs|perlpod/Heading>, E<lt>tagE<gt>\n\n=cut\n"
    assert clean_pod("f.pod", pod) == [("f.pod", "NAME\n\nperlfoo - see the docs, <tag>")]
    wn = (b"  1 licence header line | not a synset\n"
          b"02084071 05 n 02 dog 0 domestic_dog 0 001 @ 02083346 n 0000 | a member of the genus Canis\n")
    assert clean_wordnet("data.noun", wn) == [("data.noun#0", "dog, domestic dog: a member of the genus Canis")]


def _build(deb_dir, out, *extra):
    return main(["corpus", "build", "debian-docs-en", "--out", str(out), "--deb-dir", str(deb_dir),
                 "--vocab-size", "300", "--valid-per-mille", "150", "--test-per-mille", "100", *extra])


def test_build_writes_splits_manifest_and_is_deterministic(deb_dir, tmp_path, capsys):

    assert _build(deb_dir, tmp_path / "a") == 0
    out = tmp_path / "a"
    m = json.loads((out / "manifest.json").read_text())
    packages = [s.package for s in CORPORA["debian-docs-en"].sources]
    assert [s["package"] for s in m["sources"]] == packages
    for s in m["sources"]:
        debfile = deb_dir / s["deb"]
        assert s["version"] == "1.0-1"
        assert s["deb_sha256"] == hashlib.sha256(debfile.read_bytes()).hexdigest()
        assert (out / "licences" / f"{s['package']}.copyright").read_text().startswith("License: ")
    # Every document is in the split its id hashes to (recomputed here from the definition).
    total = 0
    for split in ("train", "valid", "test"):
        docs = [json.loads(line) for line in (out / "text" / f"{split}.jsonl").read_text().splitlines()]
        total += len(docs)
        for d in docs:
            bucket = int(hashlib.sha256(d["id"].encode()).hexdigest()[:16], 16) % 1000
            assert split == ("valid" if bucket < 150 else "test" if bucket < 250 else "train")
        # The token files hold one sequence per document, each ending with the end-of-document id 0.
        idx = _read_idx(out / f"{split}.idx")
        assert len(idx) == len(docs) == m["splits"][split]["documents"]
        assert sum(idx) == m["splits"][split]["tokens"]
    wordnet_docs = 2 * 6  # 6 files of 60 synsets, 50 to a document
    assert total == 10 * 6 + wordnet_docs
    # Same packages, same bytes.
    assert _build(deb_dir, tmp_path / "b") == 0
    for name in ("train.bin", "valid.bin", "test.bin", "tokenizer.json", "text/train.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _read_idx(path) -> list[int]:
    """Sequence lengths from a Megatron .idx (header: magic 9 bytes, version 8, dtype 1, count 8, docs 8)."""
    raw = path.read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    n = int(np.frombuffer(raw[18:26], dtype=np.int64)[0])
    return np.frombuffer(raw[34:34 + 4 * n], dtype=np.int32).tolist()


def test_existing_output_is_refused_and_kept(deb_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _build(deb_dir, out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0]
    assert (out / "keep.txt").read_text() == "mine"


def test_missing_package_exits_3_and_writes_nothing(deb_dir, tmp_path, capsys):
    partial = tmp_path / "debs"
    shutil.copytree(deb_dir, partial)
    next(partial.glob("perl-doc_*.deb")).unlink()
    assert _build(partial, tmp_path / "out") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"vffn-data: error: package perl-doc: no perl-doc_*.deb in --deb-dir {partial}"
    assert not (tmp_path / "out").exists()


def test_no_apt_get_exits_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get on it
    rc = main(["corpus", "build", "debian-docs-en", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")])
    assert rc == 3
    assert "apt-get not found" in capsys.readouterr().err


def test_unknown_corpus_is_one_line(tmp_path, capsys):
    assert main(["corpus", "build", "nope", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vffn-data: error: unknown corpus 'nope'; known: debian-docs-en"]


@pytest.fixture(scope="module")
def pinned_build(deb_dir, tmp_path_factory):
    """A first build (its manifest pins the package files), and a directory holding those files and a newer
    version of one package, as the archive would after a point release."""
    root = tmp_path_factory.mktemp("pinned")
    assert _build(deb_dir, root / "first") == 0
    debs = root / "debs"
    shutil.copytree(deb_dir, debs)
    make_deb(debs / "perl-doc_2.0-1_all.deb", "perl-doc", "2.0-1",
             {"usr/share/perl/5/pod/new.pod": _doc("pod", "newer")})
    return root / "first" / "manifest.json", debs


def test_manifest_rebuilds_exactly_the_recorded_versions(pinned_build, tmp_path, capsys):
    manifest, debs = pinned_build
    # Unpinned, the newest perl-doc is taken; pinned, the recorded 1.0-1, and with the earlier build's split
    # thresholds and vocabulary (not passed again): every checksum equal.
    assert main(["corpus", "build", "debian-docs-en", "--out", str(tmp_path / "new"), "--deb-dir", str(debs),
                 "--vocab-size", "300", "--valid-per-mille", "150", "--test-per-mille", "100"]) == 0
    assert next(s for s in json.loads((tmp_path / "new" / "manifest.json").read_text())["sources"]
                if s["package"] == "perl-doc")["version"] == "2.0-1"
    assert main(["corpus", "build", "debian-docs-en", "--out", str(tmp_path / "re"), "--deb-dir", str(debs),
                 "--manifest", str(manifest)]) == 0
    first, again = json.loads(manifest.read_text()), json.loads((tmp_path / "re" / "manifest.json").read_text())
    assert [(s["package"], s["version"], s["deb_sha256"]) for s in again["sources"]] == \
        [(s["package"], s["version"], s["deb_sha256"]) for s in first["sources"]]
    assert again["splits"] == first["splits"] and again["tokenizer"] == first["tokenizer"]
    assert all(len(s["text_sha256"]) == 64 for s in again["splits"].values())
    assert again["pinned_by"] == {"manifest": str(manifest), "identical": True, "differs": []}
    assert "identical to" in capsys.readouterr().err


def test_pinned_file_with_another_checksum_is_refused(pinned_build, tmp_path, capsys):
    manifest, debs = pinned_build
    tampered = tmp_path / "debs"
    shutil.copytree(debs, tampered)
    target = next(tampered.glob("sqlite3-doc_1.0-1_all.deb"))
    target.write_bytes(target.read_bytes() + b"\n")
    assert main(["corpus", "build", "debian-docs-en", "--out", str(tmp_path / "o"), "--deb-dir", str(tampered),
                 "--manifest", str(manifest)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vffn-data: error: package sqlite3-doc: ") and "pins" in err
    assert not (tmp_path / "o").exists()


def test_pinned_version_missing_exits_3_naming_it(pinned_build, tmp_path, capsys):
    manifest, debs = pinned_build
    partial = tmp_path / "debs"
    shutil.copytree(debs, partial)
    (partial / "perl-doc_1.0-1_all.deb").unlink()  # only the newer perl-doc is left
    assert main(["corpus", "build", "debian-docs-en", "--out", str(tmp_path / "o"), "--deb-dir", str(partial),
                 "--manifest", str(manifest)]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "perl-doc_1.0-1_all.deb (version 1.0-1, pinned by" in err


@pytest.mark.parametrize("content, message", [
    ("not json", "not a corpus manifest"),
    ('{"corpus": "other", "sources": []}', "is a manifest of corpus 'other'"),
    ('{"corpus": "debian-docs-en", "sources": []}', "pins no version of python3.11-doc"),
])
def test_bad_manifest_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "m.json").write_text(content)
    assert main(["corpus", "build", "debian-docs-en", "--out", str(tmp_path / "o"), "--deb-dir", str(tmp_path),
                 "--manifest", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
