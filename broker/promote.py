"""Promotion: ``models/NAME`` is a symbolic link to the version folder that serves, swapped only through the gate.

``promote`` compares the serving version and a candidate on held-out labelled items (``workers.learning``:
McNemar's exact test; refused when the candidate is worse with significance), then swaps the link atomically (a
new link beside it, ``os.replace`` over it). The candidate is loaded and verified (``specialist.load``) before the
swap: a promoted model that fails to load leaves the current one serving. The first promotion of a real folder
``models/NAME`` moves it to ``models/NAME-v1`` (refused if that exists) and links ``models/NAME`` to it first.

Jobs pin the folder the link points to when they are submitted (``submit.build_spec`` stores the resolved path),
so a swap never changes the version a running job uses. Jobs submitted while ``models/NAME`` was still a real
folder pinned that path itself: its first promotion is refused while any of them is unfinished.
"""

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cascade.broker.labelled import check_labels
from cascade.workers import specialist
from cascade.workers.data import read_labelled_csv
from cascade.workers.errors import InputError, ModelError
from cascade.workers.learning import DEFAULT_ALPHA, McNemar, correct, mcnemar
from cascade.workers.manifest import Manifest
from cascade.workers.storage import JobStore


@dataclass(frozen=True)
class Promotion:
    test: McNemar
    alpha: float
    promoted: bool
    previous: Path
    """The version folder that served before."""
    serving: Path
    """The version folder the name points to now (``previous`` when refused)."""
    moved: Path | None = None
    """Where a real model folder was moved on its first promotion."""


def first_version(model: Path) -> Path:
    """Where the first promotion moves a real folder ``models/NAME``: ``models/NAME-v1``."""
    return model.with_name(f"{model.name}-v1")


def promote(
    model: Path, candidate: Path, held_out: Path, alpha: float = DEFAULT_ALPHA, store: JobStore | None = None
) -> Promotion:
    """Gate ``candidate`` against the version ``model`` serves on the labelled CSV ``held_out``, and point
    ``model`` at it when the gate passes (``promoted``). Refusals that are errors (a candidate that does not load
    or is of another line, a ``models/NAME-v1`` in the way, unfinished jobs of the real folder in ``store``)
    raise, and change nothing."""
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha}: must be between 0 and 1")
    previous = model.resolve()
    current = specialist.load(model)
    ours = _load(candidate, model, previous)
    _check_candidate(model, candidate, current.manifest, ours.manifest)
    if not model.is_symlink():
        _check_first_promotion(model, previous, store)
    judged = read_labelled_csv(held_out)
    check_labels(judged, held_out, model)
    test = mcnemar(correct(current, judged.texts, judged.labels), correct(ours, judged.texts, judged.labels))
    if test.refuses(alpha):
        return Promotion(test, alpha, promoted=False, previous=previous, serving=previous)
    _load(candidate, model, previous)  # verified again just before it serves: the folder may have changed since
    moved = None
    if not model.is_symlink():
        moved = first_version(model)
        os.rename(model, moved)
        os.symlink(moved.name, model)
    target = candidate.resolve()
    swap(model, target)
    return Promotion(test, alpha, promoted=True, previous=moved or previous, serving=target, moved=moved)


def _load(candidate: Path, model: Path, previous: Path) -> specialist.Specialist:
    try:
        return specialist.load(candidate)
    except ModelError as e:
        raise ModelError(f"--candidate {candidate}: does not load ({e}); {model} keeps serving {previous}") from e


def _check_candidate(model: Path, candidate: Path, current: Manifest, ours: Manifest) -> None:
    target, served = candidate.resolve(), model.resolve()
    if target == served or served in target.parents:
        raise InputError(f"--candidate {candidate}: is (or is inside) the folder {model} serves")
    if ours.line[0] != current.line[0] or ours.labels != current.labels:
        raise InputError(
            f"--candidate {candidate}: not of the lineage of {model} (its root is {ours.line[0][:12]}…, "
            f"{model}'s is {current.line[0][:12]}…)"
        )


def _check_first_promotion(model: Path, folder: Path, store: JobStore | None) -> None:
    """A real folder becomes ``NAME-v1`` and ``NAME`` a link: refused when that name is taken, or while jobs that
    pinned the folder's own path (submitted before it was a link) are unfinished: their chunks would load the
    new version and fail."""
    versioned = first_version(model)
    if versioned.exists():
        raise InputError(
            f"--model {model}: a real folder, and {versioned} exists, where its first promotion moves it; "
            "move it yourself and link the name to it"
        )
    if store is None:
        return
    pinned = [job for job in store.active_ids() if store.spec(job).model_path == str(folder)]
    if pinned:
        raise InputError(
            f"--model {model}: {len(pinned)} unfinished job(s) pinned the folder itself ({', '.join(pinned[:3])}); "
            "its first promotion turns it into a link: promote when they have ended"
        )


def swap(link: Path, target: Path) -> None:
    """Point the symbolic link ``link`` at ``target`` atomically (a relative link: the models folder can move)."""
    temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex}.tmp")
    os.symlink(os.path.relpath(target, link.parent.resolve()), temporary)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
