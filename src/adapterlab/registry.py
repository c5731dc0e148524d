"""The task registry, and recipes read against it.

One line per built-in task below. A task from another package registers itself with :func:`register_task` (or
through the ``adapterlab.tasks`` entry-point group, discovered on first use), and from then on every stage,
``adapterlab validate`` and the recipe parser know it. A recipe is validated against the recipe class of its
``task:`` (a discriminated union), so each task checks only its own keys.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from adapterlab.config import RecipeBase, apply_overrides, known_keys, parse_overrides, read_recipe_file, validate_as
from adapterlab.errors import RecipeError
from adapterlab.task import Task
from adapterlab.tasks.chat import TASK as CHAT
from adapterlab.tasks.classify import TASK as CLASSIFY
from adapterlab.tasks.code import TASK as CODE
from adapterlab.tasks.dialogue import TASK as DIALOGUE
from adapterlab.tasks.summarize import TASK as SUMMARIZE

DEFAULT_TASK = "chat"
TASKS: dict[str, Task] = {task.name: task for task in (CHAT, CLASSIFY, DIALOGUE, SUMMARIZE, CODE)}
ENTRY_POINTS = "adapterlab.tasks"
_discovered = False


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Make a task known to every stage; ``replace`` swaps one registered under the same name (tests)."""
    if task.name in TASKS and not replace and TASKS[task.name] is not task:
        raise ValueError(f"a task named '{task.name}' is already registered")
    TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    TASKS.pop(name, None)


def _discover() -> None:
    """Tasks that installed packages declare in the ``adapterlab.tasks`` entry-point group."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for point in entry_points(group=ENTRY_POINTS):
        task = point.load()
        register_task(task() if isinstance(task, type) else task)


def task_names() -> list[str]:
    _discover()
    return list(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        _discover()
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"task: unknown task '{name}'{hint} (known: {', '.join(TASKS)})")
    return TASKS[name]


def task_of(recipe: RecipeBase) -> Task:
    return get_task(recipe.task)


# ----------------------------------------------------------------------------------------------- recipes


def recipe_from_dict(
    raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None, source: str = "recipe"
) -> RecipeBase:
    """Override and validate a recipe mapping against its task's recipe class; one-line RecipeError otherwise."""
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    raw = apply_overrides(dict(raw), over)
    raw.pop("source_dir", None)
    name = raw.setdefault("task", DEFAULT_TASK)
    if not isinstance(name, str):
        raise RecipeError(f"{source}: task must be a name such as {', '.join(TASKS)} (got {name!r})")
    cls = get_task(name).recipe
    return validate_as(cls, raw, over, source, other_task_keys(name))


def load_recipe(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RecipeBase:
    """Read, override and validate a recipe file; raise :class:`RecipeError` with a one-line message."""
    return recipe_from_dict(read_recipe_file(path), overrides, source=str(path))


def as_recipe(recipe: RecipeBase | str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RecipeBase:
    """Accept a recipe or a path to one, so every verb works from Python and from the CLI alike."""
    if isinstance(recipe, RecipeBase):
        if not overrides:
            return recipe
        merged = recipe_from_dict(recipe.model_dump(mode="json"), overrides)
        merged.source_dir = recipe.source_dir
        return merged
    return load_recipe(recipe, overrides)


def other_task_keys(name: str) -> dict[str, str]:
    """Keys that other tasks know and this one does not, each with (one of) the tasks it belongs to."""
    own = set(known_keys(get_task(name).recipe))
    found: dict[str, str] = {}
    for other, task in TASKS.items():
        if other != name:
            for key in known_keys(task.recipe):
                if key not in own:
                    found.setdefault(key, other)
    return found


def all_recipe_keys() -> dict[str, list[str]]:
    """Every task's known recipe keys (documentation checks, suggestions)."""
    return {name: known_keys(task.recipe) for name, task in TASKS.items()}
