"""Plug-ins found by name through entry-point groups (strategies, tasks), one lookup for all of them.

A lab ships its own strategy or task as a package that declares an entry point in the group
(``alkit.strategies``, ``alkit.tasks``) and names it in a config exactly like a built-in one; the
built-ins are declared the same way in alkit's own ``pyproject.toml``.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points


def plugin_names(group: str) -> list[str]:
    """Names registered in the entry-point ``group``, sorted."""
    return sorted({ep.name for ep in entry_points(group=group)})


def plugin_entry(group: str, name: str, what: str, error: type[Exception]) -> EntryPoint:
    """The entry point registered as ``name`` in ``group``; ``error`` lists what is available."""
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        available = ", ".join(plugin_names(group)) or "none"
        raise error(f"unknown {what} {name!r}; available: {available} (is the package that provides it installed?)")
    return found[0]
