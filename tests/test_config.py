"""Config errors fail fast and say what to change."""

from __future__ import annotations

import pytest

from flythinker_pl.cli import main
from flythinker_pl.config import ConfigError, load_config, to_yaml
from flythinker_pl.models import tiny
from flythinker_pl.models.backbones import check_same_vocabulary

from helpers import ROOT


def test_defaults_yaml_and_overrides_compose(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("fusion: {lam: 2.0, span: response}\ntrainer: {max_steps: 7}\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nfusion: {lam: 1.0}\n")
    cfg = load_config(child, ["trainer.max_steps=50"])
    assert (cfg.fusion.lam, cfg.fusion.span, cfg.trainer.max_steps) == (1.0, "response", 50)
    assert cfg.logging.experiment == "child"
    assert load_config(child).fusion.dims == "pad"  # untouched default


def test_a_list_of_bases_merges_in_order(tmp_path):
    (tmp_path / "task.yaml").write_text("data: {task: topic_writing}\nfusion: {lam: 2.0}\n")
    (tmp_path / "method.yaml").write_text("method: sft\nfusion: {lam: 0.7}\n")
    (tmp_path / "run.yaml").write_text("base: [task.yaml, method.yaml]\ntrainer: {max_steps: 3}\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.data.task, cfg.method, cfg.fusion.lam, cfg.trainer.max_steps) == ("topic_writing", "sft", 0.7, 3)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["fusion.lamda=1"],
            r"unknown config key 'fusion.lamda'. Valid keys under 'fusion': lam, norm, dims, span, eps",
        ),
        (["optimiser.lr=1"], r"unknown config key 'optimiser'. Valid keys: seed, method, generator"),
        (["fusion.lam=high"], r"bad value for 'fusion.lam': Value 'high'"),
        (["trainer.max_steps=1.5"], r"bad value for 'trainer.max_steps'"),
        (["fusion.dims=concat"], r"fusion.dims='concat' is not allowed; choose one of pad, linear"),
        (["reasoner.mode=lora_plus"], r"choose one of frozen, lora, full"),
        (["method=gpt"], r"choose one of flythinker, sft"),
        (["fusion.lam=-1"], r"fusion.lam=-1.0 must be >= 0"),
        (["fusion.eps=0"], r"fusion.eps=0.0 must be > 0"),
        (["decode.top_p=1.5"], r"decode.top_p=1.5 must be in \(0, 1\]"),
        (["decode.max_new_tokens=0"], r"decode.max_new_tokens=0 must be >= 1"),
        (["method=sft", "decode.reasoner_device=cuda:1"], r"needs method=flythinker"),
        (["reasoner.shared_base=true", "decode.reasoner_device=cuda:1"], r"without reasoner.shared_base"),
        (["method=sft", "callbacks.lambda_sweep=[0,1]"], r"lambda_sweep rescales a Reasoner's latents"),
        (["method=sft", "data.rationales=oracle"], r"only method=cot writes and splits one \(got method=sft\)"),
        (["callbacks.lambda_sweep=[1,-2]"], r"every lambda must be >= 0"),
        (["method=coconut", "train.gradient_checkpointing=true"], r"passes sharing one KV cache"),
        (
            ["method=static", "fusion.span=response", "reasoner.shared_base=true"],
            r"implemented for method=flythinker only \(got static\)",
        ),
        (["reasoner.shared_base=true", "reasoner.mode=frozen"], r"needs generator.mode=lora and reasoner.mode=lora"),
        (
            ["reasoner.shared_base=true", "reasoner.mode=lora", "train.gradient_checkpointing=true"],
            r"recompute the Reasoner's layers",
        ),
    ],
)
def test_bad_config_names_the_key_and_the_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {batchsize: 4}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'data.batchsize'.*batch_size"):
        load_config(bad)


def test_cli_reports_config_errors_before_any_work(capsys):
    assert main(["fit", "-c", str(ROOT / "experiments" / "demo.yaml"), "fusion.spam=1"]) == 2
    assert "unknown config key 'fusion.spam'" in capsys.readouterr().err


def test_tokenizer_mismatch_is_a_clear_error(corpus, tokenizer):
    other = tiny.train_tokenizer(corpus[: len(corpus) // 3], vocab_size=400)
    with pytest.raises(ConfigError, match=r"different tokenizers.*pick two models of one family"):
        check_same_vocabulary(tokenizer, other, ("gen", "rea"))
    check_same_vocabulary(tokenizer, tiny.train_tokenizer(corpus, vocab_size=600), ("gen", "rea"))


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "experiments").rglob("*.yaml")))
def test_every_shipped_config_is_valid_and_round_trips(path, tmp_path):
    cfg = load_config(ROOT / path)
    (tmp_path / "saved.yaml").write_text(to_yaml(cfg))  # what a run folder's config.yaml holds
    assert load_config(tmp_path / "saved.yaml") == cfg
    if path.startswith(
        ("experiments/product_review", "experiments/abstract_generation", "experiments/topic_writing")
    ) and not path.rpartition("/")[2].startswith("_"):
        task, method_file = path.split("/")[1], path.rpartition("/")[2]
        assert cfg.data.task == task and cfg.logging.experiment == f"{task}_{method_file[:-5]}"


def test_several_config_files_merge_in_order_later_wins():
    from flythinker_pl.cli import _config, build_parser

    demo, tiny = ROOT / "experiments" / "demo.yaml", ROOT / "experiments" / "debug" / "tiny.yaml"
    args = build_parser().parse_args(["fit", "-c", str(demo), "-c", str(tiny), "fusion.lam=2.0"])
    cfg, _ = _config(args)
    assert cfg.logging.experiment == "demo"  # named after the first file: the demo, shrunk
    assert cfg.generator.name == "tiny-64" and cfg.trainer.max_steps == 6  # from tiny.yaml, the later file
    assert cfg.data.retriever == "bm25" and cfg.fusion.dims == "pad"  # demo keys tiny.yaml leaves alone
    assert cfg.fusion.lam == 2.0  # overrides after every file
    assert load_config([tiny, demo]).generator.name == "tiny-128"  # the order decides
