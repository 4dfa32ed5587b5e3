"""A config section's common rules: unknown keys, NaN, booleans as numbers and NUL characters are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator


class Section(BaseModel):
    """A config section: unknown keys, NaN and infinities are errors, a boolean is not a number, and no
    string holds a NUL character (it cannot be part of a path)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data):
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is not None and _takes_number(field.annotation) and _has_bool(value):
                    raise ValueError(f"{key}: expected a number, got a boolean ({value!r})")
                if isinstance(value, str) and "\x00" in value:
                    raise ValueError(f"{key}: contains a NUL character")
        return data


def _takes_number(annotation) -> bool:
    """Whether a field holds ints or floats (alone, in an optional, a tuple, or as a dict's values)."""
    import typing

    return annotation in (int, float) or any(_takes_number(a) for a in typing.get_args(annotation))


def _has_bool(value) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


def declared(info: ValidationInfo) -> tuple[str, ...]:
    """The user domains (``[domains.NAME]``) of the config being validated (``ExperimentConfig.of``)."""
    return tuple((info.context or {}).get("domains", ()))
