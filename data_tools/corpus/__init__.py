"""``vffn-data corpus build NAME --out DIR``: a larger English corpus that a fresh machine can fetch.

The corpora are made of Debian packages (fetched with ``apt-get download``, no root needed), unpacked in
Python, cleaned into documents, split into train/valid/test by a hash of each document's name, tokenized with
a BPE trained on the train split, and described in ``DIR/manifest.json`` (package versions, checksums,
licences). The modules, one concern each:

* :mod:`.catalogue`  the named corpora: which packages, which files, which cleaner, which licence;
* :mod:`.deb`        reading a ``.deb`` (an ``ar`` archive holding ``control.tar.*`` and ``data.tar.*``);
* :mod:`.fetch`      getting the ``.deb`` files: ``apt-get download`` into a cache, or a local directory;
* :mod:`.clean`      turning HTML pages, POD files and WordNet data files into plain-text documents;
* :mod:`.build`      the recipe end to end, and the manifest.
"""
