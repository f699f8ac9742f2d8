"""Heading anchors for the course website (importable, so Sphinx can pickle the setting)."""


def jupyter_slug(text: str) -> str:
    """Anchors as Jupyter makes them (case kept, spaces to hyphens), so that the notebooks' links such
    as `00_quickstart.ipynb#Notation` work both in Jupyter and on the site."""
    return text.strip().replace(" ", "-")
