"""textdvae: discrete variational autoencoders for text.

    from textdvae import TextDVAE
    model = TextDVAE.from_pretrained("runs/quickstart/final")   # a folder or a Hub repo id
    codes, probs = model.encode(["the cat chased the fox ."])
    model.reconstruct(["the cat chased the fox ."])
    model.interpolate("the cat chased the fox .", "the dogs will not greet the old queen .")
"""

from transformers import AutoConfig, AutoModel

from .bottleneck import CategoricalBottleneck
from .configuration import TextDVAEConfig
from .modeling import TextDVAE, TextDVAEOutput
from .recipe import Recipe, RecipeError
from .recipe import load as load_recipe

__version__ = "0.1.0"

# After `import textdvae`, AutoConfig / AutoModel.from_pretrained(repo) return these classes.
AutoConfig.register(TextDVAEConfig.model_type, TextDVAEConfig, exist_ok=True)
AutoModel.register(TextDVAEConfig, TextDVAE, exist_ok=True)


def train(recipe: str | Recipe, overrides: list[str] | None = None) -> dict:
    """Train from a recipe file (plus ``key=value`` overrides) or a loaded Recipe; returns the final metrics."""
    from .training import train as _train

    return _train(recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides))


__all__ = ["TextDVAE", "TextDVAEConfig", "TextDVAEOutput", "CategoricalBottleneck", "Recipe", "RecipeError", "load_recipe", "train"]
