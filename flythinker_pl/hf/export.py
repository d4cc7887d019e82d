"""`flythinker export RUN_DIR --out DIR [--adapters]`: a trained run as a Hugging Face model folder.

    config.json             FlyThinkerConfig (each backbone's own config, the fusion settings, c) with
                            auto_map -> the modeling code below; a plain causal LM's config for SFT-like runs
    model.safetensors       every weight (generator.*, reasoner.*, latent_projection.*), LoRA merged
    adapters/<name>/        --adapters: peft adapters over those (base) weights instead of merged ones
    modeling_flythinker.py  models/ files of this package, copied verbatim (torch + transformers only)
    fusion_math.py
    generation_config.json  the run's sampler (decode.*: temperature, top_p, top_k, max_new_tokens) and stop ids
    tokenizer files         the run's tokenizer (chat template included)
    flythinker_run.yaml     the run's config: `flythinker generate` builds the prompts it was trained on
    README.md               the model card: config, data, metrics with their intervals, commit

Everything is written into a folder beside DIR, then renamed to DIR: nothing is ever half-written.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import GenerationConfig, PreTrainedModel

from ..config import Config, ConfigError, load_config, to_yaml
from ..models.build import SFT_METHODS
from ..models.fusion import embedding_norm
from ..models import modeling_flythinker as modeling

SHIPPED = ("modeling_flythinker.py", "fusion_math.py")  # copied into every folder whose model needs its code
RUN_CONFIG = "flythinker_run.yaml"
MODEL_CLASSES = {
    "flythinker": modeling.FlyThinkerForCausalLM,
    "static": modeling.StaticFlyThinkerForCausalLM,
    "coconut": modeling.CoconutForCausalLM,
    "sft": modeling.SFTForCausalLM,
}


def check_run(path: str | Path) -> tuple[Path, Config, Path | None]:
    """(run dir, its config, the checkpoint to export or None for a zero-shot run): one clear error for
    anything that cannot be exported, before any work."""
    from ..lit.rundirs import holding, trained_weights
    from ..lit.sharding import EXPORT_NAME

    path = Path(path)
    if path.is_dir() and path.suffix == ".ckpt":  # checkpoints/last.ckpt/ of trainer.strategy=fsdp: one file per rank
        raise ConfigError(
            f"{path} is a sharded (FSDP) checkpoint folder: export its run folder {path.parent.parent}, "
            f"whose checkpoints/{EXPORT_NAME} holds the weights exported from it at the end of fit"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder")
    if not (path / "config.yaml").exists():  # an experiment dir: its newest finished run
        run_dir = holding(
            path,
            "metrics.json",
            "neither a run folder (config.yaml) nor an experiment folder with a finished run (version_N/metrics.json)",
        )
    else:
        run_dir = path
    if not (run_dir / "metrics.json").exists():
        raise ConfigError(
            f"{run_dir} is unfinished: training has not ended (no metrics.json); rerun its `flythinker "
            "fit` (or `run`) command, which continues it from checkpoints/last.ckpt, then export"
        )
    cfg = load_config(run_dir / "config.yaml")
    if cfg.method == "flythinker_recurrent" or not cfg.reasoner.sees_profile:
        raise ConfigError(
            f"{run_dir}: method={cfg.method} with reasoner.sees_profile={cfg.reasoner.sees_profile} "
            "does not export yet (its Reasoner's inputs are not the prompt's tokens alone); export "
            "runs of method flythinker, static, coconut, sft, nonpers, rag or cot"
        )
    if cfg.trainer.max_steps == 0:  # zero-shot: the loaded weights are the run's
        return run_dir, cfg, None
    weights = trained_weights(run_dir)
    if weights.name == EXPORT_NAME and not weights.exists():
        raise FileNotFoundError(
            f"{weights.parent / 'last.ckpt'} is a sharded (FSDP) checkpoint and {weights}, the "
            "weights exported from it at the end of fit, is missing: rerun the run's fit command"
        )
    if not weights.exists():
        raise FileNotFoundError(
            f"{run_dir}: no checkpoint ({weights} is missing), so there are no trained weights to export"
        )
    return run_dir, cfg, weights


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty: name a new folder (nothing was written)")
    return out


def load_trained(cfg: Config, weights: Path | None):
    """(method in eval mode, tokenizer) of a run, its trained weights loaded as `flythinker predict` loads them."""
    from ..lit.run import build

    module, _, tokenizer = build(cfg)
    if weights is not None:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
        module.on_load_checkpoint(checkpoint)  # refuses a checkpoint of another method
        module.load_state_dict(checkpoint["state_dict"], strict=False)  # it holds the trained weights only
    return module.method.eval(), tokenizer


def _kind(cfg: Config) -> str:
    return "sft" if cfg.method in SFT_METHODS else cfg.method


def merged(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """`model` with its LoRA adapter `adapter` folded into its weights (peft), or as is without one."""
    return model.merge_and_unload(adapter_names=[adapter]) if isinstance(model, PeftModel) else model


def unloaded(model: torch.nn.Module) -> torch.nn.Module:
    """`model`'s base weights, its adapters taken out (not merged)."""
    return model.unload() if isinstance(model, PeftModel) else model


def hf_model(method, cfg: Config, adapters: bool = False, adapters_dir: Path | None = None) -> PreTrainedModel:
    """The run's method as a Hugging Face model (it takes the method's modules: build a method for each).
    SFT-like methods give the plain causal LM (merged), the others modeling_flythinker's class. With
    `adapters`, the peft adapters are saved into `adapters_dir` and the model holds the base weights."""
    kind, generator = _kind(cfg), method.generator
    if kind == "sft" and not adapters:
        return merged(generator, "generator")
    settings = _method_settings(method, cfg)  # before any merge: c as the framework computes it
    shared_base = kind == "flythinker" and cfg.reasoner.shared_base
    reasoner = getattr(method, "reasoner", None)
    names = [name for name, part in (("generator", generator), ("reasoner", reasoner)) if isinstance(part, PeftModel)]
    if shared_base:
        names = ["generator", "reasoner"]
    if adapters:
        for part in (generator, reasoner):
            if isinstance(part, PeftModel):
                part.save_pretrained(adapters_dir)  # adapter `name` goes to adapters_dir/name/
        generator, reasoner = unloaded(generator), None if shared_base else unloaded(reasoner)
    elif shared_base:  # one base, two adapters: each merged into a copy of its own
        reasoner = merged(copy.deepcopy(generator), "reasoner").base_model
        generator = merged(generator, "generator")
    else:
        generator, reasoner = merged(generator, "generator"), merged(reasoner, "reasoner")
    config = modeling.FlyThinkerConfig(
        generator=generator.config,
        reasoner=None if reasoner is None else reasoner.config,
        method=kind,
        shared_base=shared_base and adapters,
        adapters=names if adapters and names else None,
        pad_token_id=generator.config.pad_token_id,
        **settings,
    )
    with torch.device("meta"):  # a shell: its parts are the method's own modules
        model = MODEL_CLASSES[kind](config)
    model.generator = generator
    if reasoner is not None:
        model.reasoner = reasoner
    if kind in ("flythinker", "static"):
        model.latent_projection = method.fusion.project
    return model.eval()


def _method_settings(method, cfg: Config) -> dict:
    """The config.json entries of the fusion (or Coconut's thoughts), c computed as the framework does."""
    if cfg.method == "coconut":
        markers = method.markers
        norm = embedding_norm(method.generator.get_input_embeddings()) if method.norm == "table_mean" else None
        return dict(
            thoughts=method.thoughts,
            norm=method.norm,
            eps=method.eps,
            latent_norm=None if norm is None else float(norm),
            thought_markers=None if markers is None else [markers.start, markers.latent, markers.end],
        )
    if cfg.method in SFT_METHODS:
        return {}
    fusion = cfg.fusion
    return dict(
        lam=fusion.lam,
        norm=fusion.norm,
        dims=fusion.dims,
        span=fusion.span,
        eps=fusion.eps,
        latent_norm=float(method.latent_norm()),
    )


def generation_config(cfg: Config, stop_ids: list[int], pad_id: int) -> GenerationConfig:
    """The run's sampler (decode.*), every knob written out: transformers' own defaults differ (top_k 50)."""
    decode = cfg.decode
    return GenerationConfig(
        do_sample=decode.do_sample,
        temperature=decode.temperature,
        top_p=decode.top_p,
        top_k=decode.top_k,
        repetition_penalty=decode.repetition_penalty,
        min_new_tokens=decode.min_new_tokens or None,
        max_new_tokens=decode.max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )


def stop_ids(method, tokenizer) -> list[int]:
    """The tokenizer's EOS and any the Generator's generation config adds (as MethodModule.stop_ids)."""
    configured = getattr(getattr(method.generator, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys([tokenizer.eos_token_id, *[i for i in configured if i is not None]]))


def export(run: str | Path, out: str | Path, adapters: bool = False) -> Path:
    """Write the model folder of `run` (a run dir, or an experiment dir's newest finished run) to `out`."""
    from .card import model_card

    run_dir, cfg, weights = check_run(run)
    out = check_out(out)
    method, tokenizer = load_trained(cfg, weights)
    stops = stop_ids(method, tokenizer)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model = hf_model(method, cfg, adapters, staging / modeling.ADAPTERS_DIR)
        model.generation_config = generation_config(cfg, stops, tokenizer.pad_token_id)
        custom = isinstance(model, modeling.LatentCausalLM)
        if custom:
            model.config.auto_map = {
                "AutoConfig": "modeling_flythinker.FlyThinkerConfig",
                "AutoModelForCausalLM": f"modeling_flythinker.{type(model).__name__}",
            }
            for name in SHIPPED:
                shutil.copyfile(Path(modeling.__file__).with_name(name), staging / name)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / RUN_CONFIG).write_text(to_yaml(cfg))
        (staging / "README.md").write_text(model_card(run_dir, cfg, model, custom, adapters))
        if out.exists():
            out.rmdir()  # empty (check_out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
