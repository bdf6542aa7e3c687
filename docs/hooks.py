"""MkDocs hooks: show the benchmark curves that `benchmarks/paper.py --table` writes outside `docs/`, and render the
docstrings' Sphinx roles as code.

`docs/results.md` links them by their path in the repository (`../benchmarks/results/...`), which a reader of the
repository can follow. For the site, this hook adds those files to the build and points the links at the copies, so
the page shows the curves the command wrote, not a copy kept by hand. A link to a file that does not exist is left
as it is, and the strict build fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parent.parent
SOURCE = "benchmarks/results"  # the folder whose files the docs may show
# ":meth:`x`" in a docstring arrives in the HTML as ":meth:<code>x</code>": keep the code, drop the role
ROLE = re.compile(r":(?:meth|func|class|attr|mod|data|obj|exc|const):(<code>)")
LINK = re.compile(r"\]\((?:\.\./)+(" + re.escape(SOURCE) + r"/[^)\s]+)\)")


def on_files(files, config):
    for path in sorted((REPO / SOURCE).rglob("*.png")):
        uri = path.relative_to(REPO).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")  # a page in docs/api/ needs one more "../" to reach the site root

    def to_site(match: re.Match) -> str:
        uri = match.group(1)
        return f"]({'../' * depth}{uri})" if files.get_file_from_path(uri) is not None else match.group(0)

    return LINK.sub(to_site, markdown)


def on_page_content(html, page, config, files):
    return ROLE.sub(r"\1", html)
