"""Prompt templates: Jinja files in ``prompts/``, found by name, rendered in a sandbox.

A name ``NAME`` resolves to ``prompts/NAME.j2`` of the source checkout (the folder next
to the ``llm_st`` package) or, in an installed wheel, to the same file shipped as
package data of ``llm_st.prompts``; a path ending in ``.j2`` is read as it is. Adding a
template is adding a file (see ``prompts/README.md``).

Every template starts with a Jinja comment ``{# ... #}`` that documents its variables;
a line ``chat: true`` in that comment marks an instruction template whose text is the
user message of a chat (rendered through the tokenizer's chat template when it has one).
Templates that forecast must end with ``{{ history }}``, the serialized history the
model continues.

Rendering uses :class:`jinja2.sandbox.SandboxedEnvironment` (a template file cannot
reach Python internals) with :class:`jinja2.StrictUndefined` (a misspelled variable is
an error, not an empty string).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from llm_st.errors import ConfigError

_DOC = re.compile(r"^\s*\{#(.*?)#\}", re.DOTALL)
_CHAT = re.compile(r"^\s*chat\s*:\s*true\s*$", re.IGNORECASE | re.MULTILINE)


@functools.lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    """The sandboxed Jinja environment all templates render in."""
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _source_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "prompts"


def _sources() -> dict[str, Any]:
    """Template name -> file-like (a Path or an importlib resource), checkout first."""
    found: dict[str, Any] = {}
    try:
        packaged = importlib.resources.files("llm_st.prompts")
        for entry in packaged.iterdir():
            if entry.name.endswith(".j2"):
                found[entry.name[:-3]] = entry
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    source = _source_dir()
    if source.is_dir():
        found.update({p.stem: p for p in source.glob("*.j2")})
    return found


def list_templates() -> list[str]:
    """Names of the templates available without a path."""
    return sorted(_sources())


@dataclass(frozen=True)
class PromptTemplate:
    """A compiled template with its documentation.

    Attributes
    ----------
    name
        The name (file stem).
    source
        The template text.
    doc
        The leading ``{# ... #}`` comment (variable documentation).
    variables
        Variables the template reads (undeclared names, found by Jinja's parser).
    chat
        Whether the text is a chat user message (``chat: true`` in the comment).
    """

    name: str
    source: str
    doc: str
    variables: frozenset[str]
    chat: bool
    template: jinja2.Template

    @classmethod
    def from_string(cls, source: str, name: str = "<string>") -> PromptTemplate:
        env = environment()
        try:
            parsed = env.parse(source)
            compiled = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"prompt template {name!r} has a syntax error at line {exc.lineno}: {exc.message}",
                "fix the template file (Jinja syntax)",
            ) from exc
        match = _DOC.match(source)
        doc = match.group(1).strip() if match else ""
        return cls(
            name=name,
            source=source,
            doc=doc,
            variables=frozenset(meta.find_undeclared_variables(parsed)),
            chat=bool(_CHAT.search(doc)),
            template=compiled,
        )

    def render(self, **variables: Any) -> str:
        """The text for ``variables``; raises :class:`ConfigError` naming a missing variable."""
        try:
            return self.template.render(**variables)
        except jinja2.UndefinedError as exc:
            raise ConfigError(
                f"prompt template {self.name!r}: {exc.message}",
                "pass the variable or remove it from the template; provided: "
                + ", ".join(sorted(variables)),
            ) from exc
        except jinja2.TemplateError as exc:
            raise ConfigError(
                f"prompt template {self.name!r} failed to render: {exc}", "fix the template file"
            ) from exc


def load_template(name_or_path: str | Path | PromptTemplate) -> PromptTemplate:
    """A template by name (``"stats"``), by ``.j2`` path, or passed through if already loaded."""
    if isinstance(name_or_path, PromptTemplate):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".j2"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"prompt template file {path} does not exist", "check the path to the .j2 file"
            )
        return _compile(path.stem, path.read_text(encoding="utf-8"))
    sources = _sources()
    if text not in sources:
        raise ConfigError(
            f"unknown prompt template {text!r}",
            f"use one of {', '.join(sorted(sources)) or '(none found)'}, or a path to a .j2 file",
        )
    return _compile(text, sources[text].read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=64)
def _compile(name: str, source: str) -> PromptTemplate:
    return PromptTemplate.from_string(source, name)


def render(name_or_path: str | Path | PromptTemplate, **variables: Any) -> str:
    """Render one template with ``variables`` (see each template's comment for them)."""
    return load_template(name_or_path).render(**variables)
