"""A spec checked before its study is created, in one place: against its task, the
launcher it names and the study it starts from; every problem answered at once."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from service.errors import SpecError
from service.launchers import Launcher, launcher_errors
from service.spec.models import StudySpec
from service.spec.space import resolve_spec
from service.studies.warm_start import warm_start_errors
from service.tasks import UnknownTaskError, get_task

__all__ = ["checked_spec"]


def checked_spec(session: Session, spec: StudySpec, launchers: Mapping[str, Launcher]) -> StudySpec:
    """``spec`` with its task's defaults filled in, once every check passed.

    Raises:
        SpecError: every problem found, each with its field (422). An unknown task
            is the only one: nothing else can be checked without it.
    """
    try:
        task = get_task(spec.task)
    except UnknownTaskError as exc:
        raise SpecError([("task", str(exc))]) from None
    errors: list[tuple[str, str]] = []
    try:
        resolved = resolve_spec(spec, task)
    except SpecError as exc:
        errors.extend(exc.errors)
        resolved = None
    errors.extend(launcher_errors(launchers, (resolved or spec).workers))
    if resolved is not None:  # the directions to compare are the resolved ones
        errors.extend(warm_start_errors(session, resolved))
    if errors or resolved is None:
        raise SpecError(errors)
    return resolved
