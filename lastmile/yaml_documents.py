"""Reading a reviewed-like-code YAML file (an audience, a journey) into a node tree.

Audiences and journeys are files people edit by hand, so a bad one must say which file
and which line went wrong, never raise a parser traceback. Both readers start the same
way: read UTF-8 text, compose it (nodes keep their line marks for later error messages),
refuse an empty file. The domain's own error class carries the message.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def compose_document(path: Path, error: type[Exception], kind: str, expected: str) -> yaml.Node:
    """The composed root node of ``path``; ``error(message)`` for a missing, non-UTF-8,
    invalid or empty file. ``kind`` names the file ("audience"), ``expected`` its keys."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {kind} file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        started = (f" ({exc.context} on line {exc.context_mark.line + 1})"
                   if exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line else "")
        raise error(f"{path}{line}: not valid YAML: {exc.problem or exc.context}{started}") from None
    if root is None:
        raise error(f"{path}: empty file; expected {expected}")
    return root
