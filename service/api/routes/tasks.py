"""Task and health routes."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from service.read_models import TaskRead
from service.tasks.registry import all_tasks

router = APIRouter(tags=["tasks"])


class Health(BaseModel):
    """The service is up."""

    status: str


@router.get("/tasks", response_model=list[TaskRead])
async def list_tasks() -> list[TaskRead]:
    """Registered tasks with their metrics and default search space."""
    return [
        TaskRead.model_validate(
            {
                "name": t.name,
                "description": t.description,
                "metrics": list(t.metrics),
                "default_objectives": [dict(o) for o in t.default_objectives],
                "default_search_space": {k: dict(v) for k, v in t.default_search_space.items()},
                "default_task_args": dict(t.default_task_args),
                "default_params": dict(t.default_params),
            }
        )
        for t in all_tasks().values()
    ]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness."""
    return Health(status="ok")
