"""Show a package function's source next to the equation a notebook explains, so the reader sees the code too."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any


def source_markdown(*objs: Any) -> str:
    """The source of each function, method or class as one fenced Python block (docstrings kept)."""
    parts = [textwrap.dedent(inspect.getsource(o)).rstrip() for o in objs]
    return "```python\n" + "\n\n".join(parts) + "\n```"


def show_source(*objs: Any) -> None:
    """Display ``source_markdown(*objs)``: rendered Markdown in Jupyter and in the HTML reports, text elsewhere."""
    text = source_markdown(*objs)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # plain Python without IPython
        print(text)
        return
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))
