"""``provider.card``: Markdown, tables and pictures a flow task adds to its try's Flow tab.

See :mod:`provider.runtime.cards`.
"""

from provider.runtime.cards import image, markdown, table

__all__ = ["image", "markdown", "table"]
