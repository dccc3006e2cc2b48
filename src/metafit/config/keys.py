"""Every recipe key with its type, default, description and the recipes it applies to (all,
supervised, meta-RL, one task family), from the pydantic schema: what ``metafit recipes
keys`` prints and ``docs/recipes.md`` holds (a test keeps them equal)."""

from __future__ import annotations

from typing import Any

from pydantic.fields import FieldInfo

from metafit.config.schema import Recipe, scope_label

__all__ = ["key_rows", "keys_markdown"]


def _type_name(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "")
    for noise in ("<class '", "'>"):
        text = text.replace(noise, "")
    return text.replace("Literal", "one of ").replace("NoneType", "None")


def _default(info: FieldInfo) -> str:
    value: Any = info.get_default(call_default_factory=True)
    return "-" if value is None else repr(value) if isinstance(value, str) else str(value)


def key_rows() -> list[tuple[str, str, str, str, str]]:
    """``(key, type, default, description, recipes)`` of every recipe key, in the schema's
    order; ``recipes``: which recipes may set it (:func:`~metafit.config.schema.scope_label`)."""
    return [(name, _type_name(info), _default(info), (info.description or "").strip(),
             scope_label(name)) for name, info in Recipe.model_fields.items()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def keys_markdown() -> str:
    """The keys as a Markdown table."""
    lines = ["| key | type | default | what it does | recipes |", "|---|---|---|---|---|"]
    lines += [f"| `{k}` | {_cell(t)} | {_cell(d)} | {_cell(desc)} | {_cell(where)} |"
              for k, t, d, desc, where in key_rows()]
    return "\n".join(lines) + "\n"
