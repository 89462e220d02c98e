"""A bundle's file checksums: recorded in zoo.json when the bundle is written, verified whenever it
is loaded, so that a truncated, half-copied or altered file is refused with its name instead of
being loaded (or failing later with an unrelated error).

This protects against accidents (a copy cut short, a disk fault, a file edited by hand), not
against someone who may write the bundle: they can rewrite zoo.json too. See SECURITY.md.
"""

import hashlib
from pathlib import Path

from zoo.errors import ZooError

CHUNK = 1 << 20


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bundle_files(directory, manifest_name):
    """The bundle's files, as paths relative to `directory` ("a/b" on every system): every regular
    file but the manifest itself and hidden files (an editor's or a file manager's)."""
    directory = Path(directory)
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or relative.as_posix() == manifest_name:
            continue
        if path.is_symlink():
            raise ZooError(f"{directory}: {relative.as_posix()} is a symbolic link; a bundle holds plain files only")
        if path.is_file():
            found.append(relative.as_posix())
    return found


def file_digests(directory, manifest_name):
    """{relative path: sha256} of every file of the bundle being written in `directory`."""
    return {name: sha256_of(Path(directory, name)) for name in _bundle_files(directory, manifest_name)}


def verify(directory, files, manifest_name):
    """Raises a ZooError naming the first file that is missing, altered, or not listed in `files`
    ({relative path: sha256}, from the manifest)."""
    directory = Path(directory)
    for name, expected in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ZooError(f"{directory / manifest_name}: file entry {name!r} is not a path inside the bundle")
        path = directory / name
        if not path.is_file():
            raise ZooError(f"{path}: missing from the bundle (listed in {manifest_name})")
        if sha256_of(path) != expected:
            raise ZooError(f"{path}: sha256 does not match {manifest_name} (the file was altered or cut short; "
                           "export or copy the bundle again)")
    unlisted = [name for name in _bundle_files(directory, manifest_name) if name not in files]
    if unlisted:
        raise ZooError(f"{directory / unlisted[0]}: not one of the bundle's files listed in {manifest_name} "
                       "(added after the bundle was written?)")
