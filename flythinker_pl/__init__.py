"""flythinker-pl: FlyThinker ("think while generating", arXiv 2512.06690) on PyTorch Lightning.

`import flythinker_pl` stays light; the Hugging Face classes of exported models load on first use:
    flythinker_pl.FlyThinkerForCausalLM.from_pretrained(FOLDER)   # a folder written by `flythinker export`
"""

HF_CLASSES = (
    "FlyThinkerConfig",
    "FlyThinkerForCausalLM",
    "StaticFlyThinkerForCausalLM",
    "CoconutForCausalLM",
    "SFTForCausalLM",
)
__all__ = list(HF_CLASSES)


def __getattr__(name: str):
    if name in HF_CLASSES:
        from .models import modeling_flythinker

        return getattr(modeling_flythinker, name)
    raise AttributeError(f"module 'flythinker_pl' has no attribute {name!r}")
