"""Print the README's configuration tables from the settings classes; `--write` updates README.md.

A test fails when README.md and the settings classes disagree.
"""

import sys
from pathlib import Path

from app.config import env_var_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render() -> str:
    lines: list[str] = []
    for title, rows in env_var_table().items():
        lines += [f"**{title}**", "", "| Variable | Default | Meaning |", "| --- | --- | --- |"]
        lines += [f"| `{env}` | {default} | {meaning} |" for env, default, meaning in rows]
        lines.append("")
    return "\n".join(lines)


def readme_block() -> str:
    text = README.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip("\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        text = README.read_text()
        head, tail = text[: text.index(START) + len(START)], text[text.index(END) :]
        README.write_text(f"{head}\n{render()}\n{tail}")
    else:
        print(render())
