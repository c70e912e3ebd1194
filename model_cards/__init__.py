"""The model card templates; the wheel ships them as the package `hf_kgelu.model_cards`."""

from importlib import resources

PAPER_URL = "https://arxiv.org/abs/2603.21991"


def template(name: str):
    """The jinja2 template `name` of this folder (undefined variables are errors)."""
    import jinja2

    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return jinja2.Template(text, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
