"""Exported model folders (`flythinker export`, flythinker_pl/hf/ and models/modeling_flythinker.py) compute the framework's function.

Runs are written as `fit` leaves them (config.yaml, metrics.json, checkpoints/last.ckpt with the
trainable weights only), over tiny random backbones of the families grid (test_backbone_families)
whose LoRA A and B matrices are random, nonzero and distinct. Each folder is loaded by a fresh Python
that cannot import flythinker_pl (fixtures/load_exported.py: plain transformers, trust_remote_code)
and must decode greedily to the tokens of the framework's sequential engine, alone and in a
left-padded batch of four, with the framework's logits at every step and teacher-forced.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flythinker_pl.cli import main
from flythinker_pl.config import DecodeConfig, load_config, to_yaml
from flythinker_pl.decoding.engines import make_engine
from flythinker_pl.decoding.generate import generate
from flythinker_pl.hf import export as exporting
from flythinker_pl.hf.stream import stream
from flythinker_pl.lit.module import MethodModule
from flythinker_pl.models.build import build_method
from flythinker_pl.models.lora_step import LeanLoRA
from flythinker_pl.models.sft import SFT

from helpers import DEBUG_CONFIG, FAMILIES, LAM, family_folders, grid_overrides, left_padded, no_corpus
from helpers import METHODS as GRID_METHODS


LOADER = Path(__file__).parent / "fixtures" / "load_exported.py"
STEPS = 10
PROMPTS = [[5, 9, 13, 21, 8], list(range(30, 41)), [7, 7, 3, 19, 44, 52, 61, 12], [101, 3, 77]]
METHODS = {  # the grid's methods, Coconut's with its marker tokens (in the exported vocabulary too)
    **GRID_METHODS,
    "coconut": [*GRID_METHODS["coconut"], "coconut.markers=true", "coconut.marker_init=<|im_end|>"],
}
FAST = {  # case -> (family, overrides, --adapters); every method on qwen2 (both ways), variants, two families
    **{name: ("qwen2", overrides, False) for name, overrides in METHODS.items()},
    **{f"{name}_adapters": ("qwen2", overrides, True) for name, overrides in METHODS.items()},
    "lambda0": ("qwen2", ["fusion.lam=0.0"], False),
    "linear_response_frozen": ("qwen2", ["fusion.dims=linear", "fusion.span=response", "reasoner.mode=frozen"], False),
    "prompt_span_full": ("qwen2", ["fusion.span=prompt", "generator.mode=full", "reasoner.mode=full"], False),
    "coconut_table_mean": ("qwen2", ["method=coconut", "coconut.k=3", "coconut.norm=table_mean"], False),
    "gemma2": ("gemma2", [], False),
    "granite_raw": ("granite", ["fusion.norm=none"], False),
}
EXTRAS = ("flythinker", "coconut", "shared_adapters")  # cases whose folders also run beam search, sampling, ...
GREEDY = DecodeConfig(do_sample=False, max_new_tokens=STEPS, engine="sequential")


def randomise_trained(method, seed: int) -> None:
    """Every trainable LoRA (and trainable-token) matrix random and nonzero, each its own draw."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in method.named_parameters():
            if param.requires_grad and ("lora_" in name or "trainable_tokens" in name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def write_run(root: Path, name: str, folders: tuple[str, str, str], overrides: list[str], synthetic_dir: Path) -> Path:
    """A finished run of the debug config's data as `flythinker fit` leaves it, its trained weights random."""
    cfg = load_config(
        DEBUG_CONFIG,
        grid_overrides(
            folders,
            f"decode.max_new_tokens={STEPS}",
            "decode.do_sample=true",
            f"data.synthetic_dir={synthetic_dir.parent}",
            f"logging.root_dir={root}",
            f"logging.experiment={name}",
            *overrides,
        ),
    )
    method, _ = build_method(cfg, corpus=no_corpus)
    randomise_trained(method, seed=len(name))
    module = MethodModule(method, cfg.train)
    run_dir = root / name / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    trained = module.trainable_names()
    torch.save(
        {"state_dict": {k: v for k, v in module.state_dict().items() if k in trained}},
        run_dir / "checkpoints" / "last.ckpt",
    )
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "git_commit.txt").write_text("0123abc\n")
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "method": cfg.method,
                "global_step": 6,
                "val/loss": 3.2,
                "test/bleu": 1.5,
                "test/bleu_ci_low": 1.1,
                "test/bleu_ci_high": 1.9,
            }
        )
    )
    return run_dir


def framework(run_dir: Path):
    """(config, method, tokenizer) of a run loaded as `flythinker predict` loads it."""
    _, cfg, weights = exporting.check_run(run_dir)
    method, tokenizer = exporting.load_trained(cfg, weights)
    return cfg, method, tokenizer


@torch.no_grad()
def framework_results(method, tokenizer, stops: list[int]) -> dict:
    """What the loader computes, by the framework: sequential engine, lean LoRA path."""
    ids, mask = left_padded(PROMPTS, tokenizer.pad_token_id)
    prompt_len = torch.tensor([len(p) for p in PROMPTS])
    names = [str(i) for i in range(len(PROMPTS))]
    single = [
        generate(
            method, *left_padded([p], tokenizer.pad_token_id), torch.tensor([len(p)]), ["0"], GREEDY, stops
        ).tokens[0]
        for p in PROMPTS
    ]
    batch = generate(method, ids, mask, prompt_len, names, GREEDY, stops).tokens
    unstopped = torch.tensor(generate(method, ids, mask, prompt_len, names, GREEDY, eos_ids=-1).tokens)
    lean = getattr(method, "lora", None) or LeanLoRA(method)
    with lean:
        engine = make_engine(method, "sequential")
        logits, state = engine.prefill(ids, mask, prompt_len)
        steps = [logits] + [engine.step(state, unstopped[:, k]) for k in range(STEPS - 1)]
    full = [p + row for p, row in zip(PROMPTS, unstopped.tolist())]
    full_ids, full_mask = left_padded(full, tokenizer.pad_token_id)
    teacher = {"input_ids": full_ids, "attention_mask": full_mask, "prompt_len": prompt_len}
    return {
        "single": single,
        "batch": batch,
        "unstopped": unstopped,
        "step_logits": torch.stack(steps, dim=1),
        "teacher": teacher,
        "teacher_logits": method(full_ids, full_mask, prompt_len),
    }


def load_in_fresh_python(jobs: list[dict], directory: Path) -> dict:
    torch.save(jobs, directory / "jobs.pt")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(directory / "hf_modules"),
        "OMP_NUM_THREADS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    done = subprocess.run(
        [sys.executable, str(LOADER), str(directory / "jobs.pt"), str(directory / "results.pt")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=directory,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(directory / "results.pt", weights_only=False)


def export_and_load(cases: dict, tmp: Path, tokenizer, synthetic_dir: Path) -> dict:
    """case -> {"run", "folder", "framework": framework_results, "loaded": the fresh process's results}.
    A case named X_adapters exports the run of case X (or its own) with --adapters."""
    folders = {family: family_folders(family, tmp / "backbones", tokenizer) for family, _, _ in cases.values()}
    exported, jobs = {}, []
    for name, (family, overrides, adapters) in cases.items():
        base = name.removesuffix("_adapters")
        run_dir = tmp / "logs" / base / "version_0"
        if not run_dir.exists():
            run_dir = write_run(tmp / "logs", base, folders[family], overrides, synthetic_dir)
        folder = exporting.export(run_dir, tmp / "exports" / name, adapters=adapters)
        cfg, method, run_tokenizer = framework(run_dir)
        reference = framework_results(method, run_tokenizer, exporting.stop_ids(method, run_tokenizer))
        custom = cfg.method not in ("sft", "nonpers", "rag", "cot") or adapters
        teacher = None if cfg.method == "coconut" else {**reference["teacher"], "custom": custom}
        jobs.append(
            {
                "name": name,
                "folder": str(folder),
                "max_new_tokens": STEPS,
                "batch": left_padded(PROMPTS, run_tokenizer.pad_token_id),
                "teacher": teacher,
                "extras": name in EXTRAS,
            }
        )
        exported[name] = {"run": run_dir, "folder": folder, "framework": reference, "method": method, "cfg": cfg}
    loaded = load_in_fresh_python(jobs, tmp)
    assert loaded.pop("flythinker_pl imported") is False
    return {name: {**case, "loaded": loaded[name]} for name, case in exported.items()}


@pytest.fixture(scope="module")
def fast_cases(tmp_path_factory, tokenizer, synthetic_dir):
    return export_and_load(FAST, tmp_path_factory.mktemp("export"), tokenizer, synthetic_dir)


def check_case(name: str, case: dict) -> None:
    ours, loaded = case["framework"], case["loaded"]
    assert loaded["single"] == ours["single"], name  # batch 1, each prompt alone
    assert loaded["batch"] == ours["batch"], name  # the left-padded batch of four
    assert loaded["single"] == loaded["batch"], name  # padding changes nothing
    assert torch.equal(loaded["unstopped"], ours["unstopped"]), name
    torch.testing.assert_close(loaded["step_logits"], ours["step_logits"], atol=2e-5, rtol=1e-4, msg=name)
    if "teacher_logits" in loaded:
        real = ours["teacher"]["attention_mask"].bool()
        torch.testing.assert_close(
            loaded["teacher_logits"][real], ours["teacher_logits"][real], atol=2e-5, rtol=1e-4, msg=name
        )


@pytest.mark.parametrize("name", list(FAST))
def test_a_fresh_python_decodes_the_framework_tokens_and_logits(fast_cases, name):
    check_case(name, fast_cases[name])


def framework_tokens(method, tokenizer) -> list[list[int]]:
    ids, mask = left_padded(PROMPTS, tokenizer.pad_token_id)
    return generate(method, ids, mask, torch.tensor([len(p) for p in PROMPTS]), list("abcd"), GREEDY, -1).tokens


def test_lora_was_trained_and_the_latents_matter(fast_cases, tokenizer):
    """The comparisons have teeth: nonzero, distinct adapters, and latents that change the tokens."""
    state = torch.load(fast_cases["flythinker"]["run"] / "checkpoints" / "last.ckpt")["state_dict"]
    lora_b = [value for key, value in state.items() if "lora_B" in key]
    assert len(lora_b) > 10 and all(b.abs().min() > 0 for b in lora_b)
    assert len({round(float(b.sum()), 5) for b in lora_b}) == len(lora_b)
    plain = framework_tokens(SFT(fast_cases["flythinker"]["method"].generator), tokenizer)
    assert plain != fast_cases["flythinker"]["loaded"]["unstopped"].tolist()


def test_a_lambda_zero_export_decodes_as_the_sft_generator(fast_cases, tokenizer):
    case = fast_cases["lambda0"]
    sft = SFT(case["method"].generator)
    assert case["loaded"]["unstopped"].tolist() == framework_tokens(sft, tokenizer)
    sft_results = framework_results(sft, tokenizer, [-1])
    torch.testing.assert_close(case["loaded"]["step_logits"], sft_results["step_logits"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", list(METHODS))
def test_adapters_and_merged_exports_give_the_same_tokens(fast_cases, method):
    merged, adapters = fast_cases[method]["loaded"], fast_cases[f"{method}_adapters"]["loaded"]
    assert adapters["class"] != "Qwen2ForCausalLM"  # peft adapters need the folder's code, even for SFT
    for key in ("single", "batch"):
        assert adapters[key] == merged[key], key
    assert torch.equal(adapters["unstopped"], merged["unstopped"])
    folder = fast_cases[f"{method}_adapters"]["folder"]
    adapter_files = sorted(
        p.relative_to(folder).as_posix() for p in folder.glob("adapters/*/adapter_model.safetensors")
    )
    names = {"sft": ["generator"], "coconut": ["generator"]}.get(method, ["generator", "reasoner"])
    assert adapter_files == [f"adapters/{name}/adapter_model.safetensors" for name in names]
    assert not list(fast_cases[method]["folder"].glob("adapters"))


@pytest.mark.parametrize("name", EXTRAS)
@torch.no_grad()
def test_beam_search_sampling_streamers_processors_and_stopping_criteria(fast_cases, name, tokenizer):
    """Beam search reorders both caches and the pending latents: each returned beam's score is the
    log-probability the framework's teacher-forced pass gives its tokens."""
    case = fast_cases[name]
    extras, method = case["loaded"]["extras"], case["method"]
    width = max(map(len, PROMPTS))
    for row, prompt in enumerate(PROMPTS):
        tokens = case["loaded"]["extras"]["beam_sequences"][row, width:].tolist()
        ids = torch.tensor([prompt + tokens])
        logits = method(ids, torch.ones_like(ids), torch.tensor([len(prompt)]))
        logprobs = logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        expected = logprobs.gather(1, torch.tensor(tokens)[:, None]).sum()
        assert float(extras["beam_scores"][row]) == pytest.approx(float(expected), abs=1e-3), row
    assert 1 <= extras["sampled"] <= STEPS  # the folder's generation config: the run's max_new_tokens
    assert extras["banned"] not in extras["with_ban"] and len(extras["with_ban"]) == STEPS
    assert extras["stopped_new_tokens"] == 3
    alone = case["framework"]["single"][0]  # greedy, up to its first stop id
    assert extras["streamed_tokens"][: len(alone)] == alone and len(extras["streamed_tokens"]) == STEPS
    assert extras["streamed"] == tokenizer.decode(extras["streamed_tokens"])
    assert extras["pipeline"]["role"] == "assistant" and extras["chat_greedy"].strip()
    assert extras["pipeline"]["content"].strip() == extras["chat_greedy"].strip()


def test_the_folder_holds_config_code_weights_tokenizer_sampler_and_card(fast_cases):
    case = fast_cases["linear_response_frozen"]
    folder, cfg, method = case["folder"], case["cfg"], case["method"]
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "modeling_flythinker.py",
        "fusion_math.py",
        "flythinker_run.yaml",
        "README.md",
    } <= names
    for shipped in ("modeling_flythinker.py", "fusion_math.py"):  # the framework's own files, verbatim
        assert (folder / shipped).read_bytes() == (Path(exporting.modeling.__file__).parent / shipped).read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "flythinker" and config["auto_map"] == {
        "AutoConfig": "modeling_flythinker.FlyThinkerConfig",
        "AutoModelForCausalLM": "modeling_flythinker.FlyThinkerForCausalLM",
    }
    assert (config["lam"], config["norm"], config["dims"], config["span"], config["eps"]) == (
        LAM,
        "table_mean",
        "linear",
        "response",
        1e-6,
    )
    assert config["latent_norm"] == float(method.latent_norm())  # c, to the last bit
    assert config["generator"]["model_type"] == config["reasoner"]["model_type"] == "qwen2"
    assert (config["generator"]["hidden_size"], config["reasoner"]["hidden_size"]) == (64, 32)
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    assert torch.equal(weights["latent_projection.weight"], method.fusion.project.weight)
    assert any(key.startswith("reasoner.layers.") for key in weights) and not any("lora" in key for key in weights)
    sampler = json.loads((folder / "generation_config.json").read_text())
    assert (
        sampler["do_sample"],
        sampler["temperature"],
        sampler["top_p"],
        sampler["top_k"],
        sampler["max_new_tokens"],
    ) == (True, 0.8, 0.95, 0, STEPS)
    assert load_config(folder / "flythinker_run.yaml") == cfg
    card = (folder / "README.md").read_text()
    assert "1.50 [1.10, 1.90]" in card and "0123abc" in card and "trust_remote_code=True" in card
    plain = fast_cases["sft"]["folder"]
    assert json.loads((plain / "config.json").read_text())["model_type"] == "qwen2"  # no custom code needed
    assert not (plain / "modeling_flythinker.py").exists()
    assert "trust_remote_code" not in (plain / "README.md").read_text()


def test_flythinker_pl_loads_its_folders_and_its_import_stays_light(fast_cases, tokenizer):
    import flythinker_pl

    model = flythinker_pl.FlyThinkerForCausalLM.from_pretrained(fast_cases["flythinker"]["folder"]).eval()
    ids, mask = left_padded(PROMPTS, tokenizer.pad_token_id)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=STEPS, eos_token_id=None)
    assert torch.equal(out[:, ids.shape[1] :], fast_cases["flythinker"]["framework"]["unstopped"])
    done = subprocess.run(
        [sys.executable, "-c", "import sys, flythinker_pl; assert 'torch' not in sys.modules"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


class Pieces(io.StringIO):
    """A stream that keeps each write: text that arrives in pieces was streamed."""

    def __init__(self):
        super().__init__()
        self.pieces = []

    def write(self, text):
        self.pieces.append(text)
        return super().write(text)


def greedy_text(method, tokenizer, record: dict, cfg, decode: DecodeConfig) -> str:
    """The framework's own output for `record`: its training prompt, decoded by `generate`."""
    from flythinker_pl.data.datamodule import prepare_record

    example = prepare_record(record, cfg.data, tokenizer)
    prompt = torch.tensor([example["input_ids"][: example["prompt_len"]].tolist()])
    stops = exporting.stop_ids(method, tokenizer)
    generation = generate(
        method, prompt, torch.ones_like(prompt), torch.tensor([prompt.shape[1]]), ["x"], decode, stops
    )
    return tokenizer.decode(generation.tokens[0], skip_special_tokens=True)


def test_generate_streams_the_prompt_the_run_trained_on(fast_cases, tmp_path, capsys):
    """`flythinker generate` on a run and on its folder: the record's prompt as training built it, the
    text streamed in pieces, the framework's greedy tokens; --history + --query rebuild the same prompt."""
    from flythinker_pl.data.datamodule import load_split

    case = fast_cases["flythinker"]
    cfg, method = case["cfg"], case["method"]
    record = load_split(cfg.data, "test").records[2]
    _, tokenizer = exporting.load_trained(cfg, None)
    expected = greedy_text(method, tokenizer, record, cfg, GREEDY)
    history = tmp_path / "history.json"
    history.write_text(json.dumps(record["profile"]))
    for source, prompt_args in [
        (case["run"], {"record": record["id"]}),
        (case["folder"], {"record": record["id"]}),
        (case["folder"], {"history": history, "query": record["input"]}),
    ]:
        out, err = Pieces(), io.StringIO()
        result = stream(source, **prompt_args, greedy=True, out=out, err=err)
        assert result["text"] == expected and out.getvalue() == expected + "\n", source
        assert len(out.pieces) > 2  # written as it came, not at the end
        assert "ms/token" in err.getvalue() and result["ms_per_token"] > 0
    capsys.readouterr()
    assert main(["generate", str(case["folder"]), "--record", record["id"], "--greedy"]) == 0
    printed = capsys.readouterr()
    assert printed.out == expected + "\n" and f"[{result['new_tokens']} tokens, " in printed.err


def test_bad_input_is_one_clear_line_and_nothing_is_written(fast_cases, tmp_path, capsys, monkeypatch):
    import shutil

    source = fast_cases["sft"]["run"]

    def run_copy(name: str) -> Path:
        return Path(shutil.copytree(source, tmp_path / name / "version_0"))

    def refused(run: Path, out: Path, *message: str) -> None:
        before = sorted(out.iterdir()) if out.exists() else None
        capsys.readouterr()
        assert main(["export", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and all(m in err for m in message), err
        assert (sorted(out.iterdir()) if out.exists() else None) == before
        assert not list(out.parent.glob(".*.partial"))

    unfinished = run_copy("unfinished")
    (unfinished / "metrics.json").unlink()
    refused(unfinished, tmp_path / "a", "unfinished", "no metrics.json")
    missing = run_copy("missing")
    (missing / "checkpoints" / "last.ckpt").unlink()
    refused(missing, tmp_path / "b", "no checkpoint", "last.ckpt")
    sharded = run_copy("sharded")
    (sharded / "checkpoints" / "last.ckpt").unlink()
    (sharded / "checkpoints" / "last.ckpt").mkdir()
    (sharded / "checkpoints" / "last.ckpt" / "__0_0.distcp").write_bytes(b"")
    refused(sharded / "checkpoints" / "last.ckpt", tmp_path / "c", "sharded (FSDP)", "weights.ckpt", str(sharded))
    refused(sharded, tmp_path / "d", "sharded (FSDP)", "weights.ckpt", "is missing")
    shutil.copy(source / "checkpoints" / "last.ckpt", sharded / "checkpoints" / "weights.ckpt")
    assert exporting.export(sharded, tmp_path / "from_fsdp") == tmp_path / "from_fsdp"  # its exported weights
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    refused(source, taken, "exists and is not empty")

    def broken(*args, **kwargs):  # after the weights, the tokenizer and the code were written
        raise OSError("disk full")

    monkeypatch.setattr("flythinker_pl.hf.card.model_card", broken)
    with pytest.raises(OSError, match="disk full"):
        exporting.export(source, tmp_path / "e")
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.partial"))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.undo()
    assert exporting.export(source, empty) == empty and (empty / "config.json").exists()  # an empty --out is fine


@pytest.mark.slow
def test_every_method_on_every_family(tmp_path, tokenizer, synthetic_dir):
    cases = {
        f"{family}_{method}": (family, overrides, False) for family in FAMILIES for method, overrides in METHODS.items()
    }
    cases.update({f"{family}_flythinker_adapters": (family, [], True) for family in FAMILIES})
    results = export_and_load(cases, tmp_path, tokenizer, synthetic_dir)
    for name, case in results.items():
        check_case(name, case)
    for family in FAMILIES:
        merged, adapters = results[f"{family}_flythinker"]["loaded"], results[f"{family}_flythinker_adapters"]["loaded"]
        assert merged["batch"] == adapters["batch"] and torch.equal(merged["unstopped"], adapters["unstopped"]), family


@pytest.mark.slow
def test_a_demo_style_run_exports_and_streams_end_to_end(run_config, tmp_path, capsys):
    """The debug run of the demo's config (tiny presets, pretrained, fitted): fit, export, then
    `flythinker generate` on the folder streams the framework's greedy output."""
    from flythinker_pl.data.datamodule import load_split
    from flythinker_pl.lit.run import fit

    cfg = run_config("trainer.max_steps=2", "trainer.val_check_interval=2", "decode.max_new_tokens=12")
    run_dir = fit(cfg)
    assert main(["export", str(run_dir.parent), "--out", str(tmp_path / "demo")]) == 0
    record = load_split(cfg.data, "test").records[0]
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "demo"), "--record", record["id"], "--greedy"]) == 0
    streamed = capsys.readouterr()
    _, method, tokenizer = framework(run_dir)

    assert (
        streamed.out
        == greedy_text(method, tokenizer, record, cfg, dataclasses.replace(GREEDY, max_new_tokens=12)) + "\n"
    )
    assert "ms/token" in streamed.err
