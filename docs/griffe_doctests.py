"""A griffe extension for the API reference: the ``>>>`` examples in docstrings become ``pycon``
code blocks (Markdown would otherwise read them as nested quotes), and Sphinx roles
(``:func:`plan```) become plain code. Used by mkdocs.yml; not part of the package."""

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc):`~?([^`]+)`")


def fence(text: str) -> str:
    out, block = [], []
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith(">>>") or (block and stripped):
            if not block:
                indent = line[: len(line) - len(line.lstrip())]
            block.append(line[len(indent):] if line.startswith(indent) else stripped)
            continue
        if block:
            out += [indent + "```pycon"] + [indent + b for b in block] + [indent + "```"]
            block = []
        out.append(line)
    return "\n".join(out[:-1])


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence(ROLE.sub(r"`\1`", obj.docstring.value))
