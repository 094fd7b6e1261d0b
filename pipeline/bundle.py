"""Moving cached work between machines: ``bundle`` packs the artifacts a profile has produced (and
the training checkpoints of tasks still running) into one tar file; ``unbundle`` checks every file
of it and adds its entries to another artifacts folder, where a rerun of the profile takes them from
the cache. This is how a row grows across several short runs on different machines, and how trained
models reach a Jetson to have their engines built there.

A bundle holds ``bundle.json`` (what it holds, with every file's size and sha256) and the entries'
folders under ``store/<stage>/<key>/`` (finished artifacts) or ``store/<stage>/.resume-<key>/``
(training checkpoints). Unbundling verifies everything before it adds anything, and adds each entry
by one rename, so an entry is either there whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from stages.common.errors import ArtifactError, first_line
from pipeline.output_paths import file_in_the_way
from pipeline.registry import STAGES
from pipeline.store import DISK_FULL, MANIFEST, RESUME_PREFIX, ArtifactStore, retire
from stages.common.checksums import file_records, first_mismatch

INDEX = "bundle.json"
FORMAT = 1


def pack(store: ArtifactStore, tasks, output: Path, profile_name: str) -> dict[str, Any]:
    """Write the bundle of ``tasks`` (those finished, and the checkpoints of those under way) to
    ``output``; returns its index. The tar is written aside and renamed, so ``output`` is never
    half-written."""
    from stages.common.hardware import machine

    entries, missing = [], []
    for task in tasks:
        artifact = store.lookup(task.stage, task.key)
        if artifact is not None:
            entries.append({"task": task.id, "stage": task.stage, "key": task.key, "kind": "artifact",
                            "folder": f"store/{task.stage}/{task.key}", "files": file_records(artifact.path)})
            continue
        resume = store.resume_folder(task.stage, task.key)
        if resume.is_dir() and any(resume.iterdir()):
            entries.append({"task": task.id, "stage": task.stage, "key": task.key, "kind": "resume",
                            "folder": f"store/{task.stage}/{RESUME_PREFIX}{task.key}", "files": file_records(resume)})
        else:
            missing.append(task.id)
    if not entries:  # most often the wrong --artifacts folder: an empty bundle would only hide that
        raise ArtifactError(f"{store.root}: profile {profile_name!r} has produced nothing there yet (no finished "
                            f"task, no training checkpoint), so no bundle was written; run it first, or pass "
                            f"--artifacts the folder that holds its results")
    index = {"format": FORMAT, "profile": profile_name, "created": datetime.now(timezone.utc).isoformat(),
             "machine": machine(), "stage_versions": {name: decl.version for name, decl in STAGES.items()},
             "entries": entries, "not_bundled": missing}
    if output.is_dir():
        raise ArtifactError(f"-o {output}: a folder; name the bundle's file, e.g. -o {output / 'run.tar'}")
    in_the_way = file_in_the_way(output)
    if in_the_way is not None:
        raise ArtifactError(f"-o {output}: {in_the_way} is a file, not a folder; pass -o elsewhere")
    partial = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(partial, "w") as tar:
            payload = json.dumps(index, indent=1).encode()
            info = tarfile.TarInfo(INDEX)
            info.size, info.mtime = len(payload), int(datetime.now().timestamp())
            import io

            tar.addfile(info, io.BytesIO(payload))
            for entry in entries:
                for name in entry["files"]:
                    tar.add(store.root / entry["folder"] / name, arcname=f"{entry['folder']}/{name}", recursive=False)
        os.replace(partial, output)
    except OSError as exc:
        _discard(partial)
        if exc.filename and Path(exc.filename).resolve().is_relative_to(store.root.resolve()):
            raise  # reading the store, not writing the bundle
        fix = "free space there" if exc.errno in DISK_FULL else "choose a writable place"
        raise ArtifactError(f"-o {output}: cannot write the bundle ({exc.strerror or exc}); {fix}, or pass -o "
                            f"elsewhere") from exc
    except BaseException:
        _discard(partial)
        raise
    return index


def _discard(partial: Path) -> None:
    try:
        partial.unlink(missing_ok=True)
    except OSError:  # its folder was never made (a file stands in the way): nothing was written
        pass


def _refuse(bundle: Path, why: str) -> ArtifactError:
    return ArtifactError(f"{bundle}: {why}; nothing was added")


def _checked_index(bundle: Path, tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = tar.getmember(INDEX)
        index = json.loads(tar.extractfile(member).read())
    except KeyError:
        raise _refuse(bundle, f"not a stochkd-pipeline bundle (no {INDEX})") from None
    except ValueError as exc:
        raise _refuse(bundle, f"{INDEX} is unreadable ({first_line(exc)})") from exc
    if index.get("format") != FORMAT:
        raise _refuse(bundle, f"bundle format {index.get('format')!r} is not {FORMAT}; make it again with this "
                              f"version of stochkd-pipeline")
    for entry in index.get("entries", []):
        stage, key, kind = entry.get("stage"), str(entry.get("key", "")), entry.get("kind")
        if stage not in STAGES:
            raise _refuse(bundle, f"entry {entry.get('task')!r} names an unknown stage {stage!r}")
        expected = f"store/{stage}/{key}" if kind == "artifact" else f"store/{stage}/{RESUME_PREFIX}{key}"
        if kind not in ("artifact", "resume") or not key.isalnum() or entry.get("folder") != expected:
            raise _refuse(bundle, f"entry {entry.get('task')!r} has a malformed key or folder")
        made_with = index.get("stage_versions", {}).get(stage, 0)
        if made_with > STAGES[stage].version:
            raise _refuse(bundle, f"its {stage} artifacts come from a newer stochkd-pipeline (stage version "
                                  f"{made_with}, this one has {STAGES[stage].version}); upgrade stochkd-pipeline here")
    return index


def _safe_name(bundle: Path, name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != "store":
        raise _refuse(bundle, f"it holds a path leading outside the artifact store ({name!r})")
    return path


def unpack(bundle: Path, store: ArtifactStore, *, replace_checkpoints: bool = False) -> dict[str, Any]:
    """Verify ``bundle`` completely, then add its entries that ``store`` lacks; returns what was
    added and what was there already. With ``replace_checkpoints``, a training checkpoint replaces the
    one ``store`` holds (a cluster node's newer one), else the one here is kept."""
    if not bundle.is_file():
        raise ArtifactError(f"{bundle}: no such bundle; make one with stochkd-pipeline bundle PROFILE -o FILE.tar")
    scratch = store.root / "store" / f".unbundle-{uuid.uuid4().hex[:8]}"
    try:
        with tarfile.open(bundle, "r") as tar:
            index = _checked_index(bundle, tar)
            wanted = {f"{e['folder']}/{name}": e for e in index["entries"] for name in e["files"]}
            scratch.mkdir(parents=True)
            for member in tar:
                if member.name == INDEX:
                    continue
                path = _safe_name(bundle, member.name)
                if not member.isfile():
                    raise _refuse(bundle, f"{member.name} is not a plain file")
                if member.name not in wanted:
                    raise _refuse(bundle, f"{member.name} is not listed in {INDEX}")
                target = scratch.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, (tarfile.TarError, EOFError)) and exc.filename \
                and str(store.root) in str(exc.filename):
            raise store.unwritable(exc) from exc
        raise _refuse(bundle, f"cannot be read ({first_line(exc).rstrip(':')}); cut short, or not a tar "
                              f"file") from exc
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        for entry in index["entries"]:
            folder = scratch / entry["folder"]
            mismatch = first_mismatch(folder, entry["files"])
            if mismatch:
                raise _refuse(bundle, f"{entry['folder']}/{mismatch[0]} is missing or does not match its checksum")
            if entry["kind"] == "artifact":
                manifest = json.loads((folder / MANIFEST).read_text())
                if manifest.get("key") != entry["key"] or manifest.get("stage") != entry["stage"]:
                    raise _refuse(bundle, f"{entry['folder']}: its manifest belongs to another task")
        added, present = [], []
        for entry in index["entries"]:
            final = store.root / entry["folder"]
            if entry["kind"] == "artifact" and store.lookup(entry["stage"], entry["key"]) is not None:
                present.append(entry["task"])
                continue
            if entry["kind"] == "resume" and (store.lookup(entry["stage"], entry["key"]) is not None
                                              or (final.is_dir() and not replace_checkpoints)):
                present.append(entry["task"])  # finished here, or resuming here already: keep this one's
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # an entry that failed its checks here, or an older checkpoint: replaced
                retire(final, entry["key"])
            os.replace(scratch / entry["folder"], final)
            added.append(entry["task"] + (" (training checkpoint)" if entry["kind"] == "resume" else ""))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"profile": index.get("profile"), "added": added, "present": present,
            "not_bundled": index.get("not_bundled", [])}
