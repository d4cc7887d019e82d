"""Coconut's recipe around the forward (test_coconut_official.py pins that): the curriculum's stage
schedule against a port of the official dataset.py, stage batches built from real chain-of-thought
examples, the marker tokens (vocabulary, initial rows, trainable under LoRA), the warm start from a
method=cot run, and a fit that walks the stages (optimiser reset, per-stage metrics)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from flythinker_pl.config import CoconutConfig, ConfigError, DecodeConfig, TrainConfig, load_config
from flythinker_pl.data.batching import collate
from flythinker_pl.data.coconut_schedule import (
    Schedule,
    decoding_plan,
    decoding_thoughts,
    stage_batch,
    step_counts,
    training_plan,
)
from flythinker_pl.data.datamodule import prepare_records, split_records
from flythinker_pl.data.encode import IGNORE_INDEX, rationale_fields, token_ids
from flythinker_pl.data.prompts import RATIONALE_PREFIX, RESPONSE_MARKER, with_rationale
from flythinker_pl.data.rationales import rationale_steps
from flythinker_pl.lit.coconut_curriculum import CoconutCurriculum
from flythinker_pl.lit.module import MethodModule
from flythinker_pl.lit.run import build, fit, predict
from flythinker_pl.models import tiny
from flythinker_pl.models.build import build_method
from flythinker_pl.models.coconut import Coconut
from flythinker_pl.models.coconut_setup import MARKER_TOKENS

from helpers import GENERATOR_MODES, ROOMY, no_corpus, sizes, synthetic_cfg


START, LATENT, END = -1, -2, -3  # the official sequence's markers, as stand-ins
PREFIX, MARKER = [901, 902], [903]  # our RATIONALE_PREFIX / RESPONSE_MARKER, as stand-ins


# --- the stage schedule against dataset.py --------------------------------------------------------

# The official rules are written out from facebookresearch/coconut at commit 0fd00ec (dataset.py)
# and 07a5573 (run.py); line numbers are theirs.


def official_training_sequence(stage, question, steps, answer, cfg, rng):
    """dataset.py L243-284, get_cot_latent_dataset's process_dataset (its module-level `random` as
    `rng`): uniform_prob's random stage (L245-252), the steps skipped and latents (L254-273). run.py
    builds the training set (L268) and the validation-loss set (L292) with it, at the epoch's stage."""
    if rng.random() < cfg.uniform_prob:
        stage = rng.choice(list(range(len(steps) + 1)))
    if stage > cfg.max_latent_stage:
        skipped = 10000
        latents = cfg.max_latent_stage if cfg.pad_latent_to_max else min(len(steps), cfg.max_latent_stage)
    else:
        skipped, latents = stage, stage
    latents *= cfg.c_thought
    return question + [START] + [LATENT] * latents + [END] + sum(steps[skipped:], []) + answer


def official_decoding_thoughts(stage, steps, cfg):
    """dataset.py L188-209, get_question_latent_dataset's process_dataset: the latents after the
    question, capped by the record's own steps without pad_latent_to_max (L200-205). run.py decodes
    the validation set with it at the epoch's stage (L247)."""
    most = cfg.max_latent_stage if cfg.pad_latent_to_max else min(cfg.max_latent_stage, len(steps))
    return min(most, stage) * cfg.c_thought


def chain_of_thought_example(question, steps, answer, record_id, prefix=PREFIX, marker=MARKER):
    """What encode.py makes of a record with a rationale (stand-in token ids)."""
    rationale = prefix + sum(steps, []) + marker
    return {
        "id": record_id,
        "input_ids": question + rationale + answer,
        "prompt_len": len(question),
        "reference": "",
        **rationale_fields(len(rationale), steps),
    }


def as_official(row, prompt_len, thoughts, answer_len, prefix=PREFIX, marker=MARKER):
    """Our stage row in the official layout: question, markers and latents, remaining steps, answer."""
    question, target = row[:prompt_len], row[prompt_len:]
    steps = target[len(prefix) : -len(marker) - answer_len] if target[: len(prefix)] == prefix else []
    return question + [START] + [LATENT] * thoughts + [END] + steps + target[len(target) - answer_len :]


RECORDS = [
    ([11, 12, 13], [[21, 22], [23], [24, 25, 26]], [31, 32]),  # 3 steps
    ([14], [[27]], [33]),  # 1 step
    ([15, 16], [], [34, 35, 36]),  # no rationale (an evaluation record)
    ([17, 18], [[28, 29], [30]], [37]),
]  # 2 steps
SCHEDULES = [
    CoconutConfig(c_thought=c, max_latent_stage=m, pad_latent_to_max=pad, uniform_prob=p)
    for c, m, pad, p in itertools.product((1, 2), (1, 3), (True, False), (0.0, 0.5))
]


@pytest.mark.parametrize(
    "cfg",
    SCHEDULES,
    ids=lambda c: f"c{c.c_thought}-max{c.max_latent_stage}-pad{int(c.pad_latent_to_max)}-u{c.uniform_prob}",
)
def test_stage_batches_match_the_official_schedule(cfg):
    batch = collate([chain_of_thought_example(q, s, a, f"r{i}") for i, (q, s, a) in enumerate(RECORDS)], pad_id=0)
    assert step_counts(batch) == [len(steps) for _, steps, _ in RECORDS]
    for stage, draw in itertools.product(range(6), range(3)):
        ours_rng, theirs_rng = random.Random(draw), random.Random(draw)  # the same draws, record by record
        plans = [training_plan(Schedule.of(cfg), stage, n, ours_rng) for n in step_counts(batch)]
        staged = stage_batch(batch, plans, PREFIX, MARKER, pad_id=0)
        for row, (question, steps, answer) in enumerate(RECORDS):
            ours = staged["input_ids"][row][staged["attention_mask"][row].bool()].tolist()
            theirs = official_training_sequence(stage, question, steps, answer, cfg, theirs_rng)
            assert as_official(ours, len(question), int(staged["thoughts"][row]), len(answer)) == theirs, (stage, row)
            labels = staged["labels"][row][staged["attention_mask"][row].bool()].tolist()
            assert labels == [IGNORE_INDEX] * len(question) + ours[len(question) :]
        assert decoding_plan(Schedule.of(cfg), stage, batch).tolist() == [
            official_decoding_thoughts(stage, steps, cfg) for _, steps, _ in RECORDS
        ]


def test_stages_follow_the_optimiser_step_as_the_official_epochs_do():
    """GSM8K: epochs_per_stage=3, resumed at epoch 3 from the CoT run: stage = epoch // 3."""
    curriculum = CoconutCurriculum(CoconutConfig(first_stage=1, steps_per_stage=3), seed=0)
    assert [curriculum.scheduled_stage(step) for step in range(9)] == [(3 + e) // 3 for e in range(9)]


def test_stage_zero_rebuilds_the_chain_of_thought_batch_exactly_and_later_stages_drop_steps(synthetic_dir, tokenizer):
    cfg = synthetic_cfg(synthetic_dir, rationales="oracle", rationale_tokens=10_000, **ROOMY)
    records, rationales, _ = split_records(cfg, "train")
    examples = prepare_records(records[:4], cfg, tokenizer, rationales)
    batch = collate(examples, tokenizer.pad_token_id)
    pieces = token_ids(tokenizer, RATIONALE_PREFIX), token_ids(tokenizer, RESPONSE_MARKER), tokenizer.pad_token_id
    assert step_counts(batch) == [2] * 4  # the oracle rationale: two sentences
    unchanged = stage_batch(batch, [(0, 0)] * 4, *pieces)  # the steps, tokenised one by one, are the whole
    for key in ("input_ids", "attention_mask", "labels", "profile_mask", "prompt_len"):
        assert torch.equal(unchanged[key], batch[key]), key
    assert "step_ids" not in unchanged  # rebuilt once: the steps no longer describe the rows

    plans = [(1, 2), (2, 4), (1, 2), (2, 4)]
    staged = stage_batch(batch, plans, *pieces)
    for row, (record, example, (removed, thoughts)) in enumerate(zip(records, examples, plans)):
        real = staged["attention_mask"][row].bool()
        ids, prompt_len = staged["input_ids"][row][real].tolist(), example["prompt_len"]
        kept = "".join(rationale_steps(rationales[record["id"]])[removed:])
        expected = with_rationale(kept, record["output"]) if kept else record["output"]
        assert tokenizer.decode(ids[prompt_len:], skip_special_tokens=True) == expected
        assert ids[:prompt_len] == example["input_ids"][:prompt_len].tolist()
        assert int(staged["thoughts"][row]) == thoughts
        profile = staged["profile_mask"][row][real]
        assert profile[:prompt_len].tolist() == example["profile_mask"][:prompt_len].tolist()
        assert profile[prompt_len:].sum() == 0


def test_a_batch_without_rationale_steps_is_refused():
    batch = collate([{"id": "a", "input_ids": [5, 6, 7], "prompt_len": 2, "reference": ""}], pad_id=0)
    with pytest.raises(ValueError, match="data.rationales"):
        stage_batch(batch, [(0, 1)], PREFIX, MARKER, pad_id=0)


def test_validation_batches_take_uniform_prob_stages_as_the_official_validation_set(tokenizer):
    """run.py builds its validation-loss set with get_cot_latent_dataset (L292), uniform_prob included,
    anew each epoch: so does our validation, each validation drawing anew."""
    prefix, marker = token_ids(tokenizer, RATIONALE_PREFIX), token_ids(tokenizer, RESPONSE_MARKER)
    cfg = CoconutConfig(c_thought=2, max_latent_stage=3, pad_latent_to_max=False, uniform_prob=0.5)
    fixed = dataclasses.replace(cfg, uniform_prob=0.0)
    curriculum, module = CoconutCurriculum(cfg, seed=3), SimpleNamespace(tokenizer=tokenizer)
    records = [(q, s, a, f"r{i}-{copy}") for copy in range(4) for i, (q, s, a) in enumerate(RECORDS)]
    at_random, by_validation = 0, {0: [], 40: []}
    for step, stage in itertools.product(by_validation, range(5)):
        curriculum.stage = stage
        batch = collate(
            [chain_of_thought_example(q, s, a, record_id, prefix, marker) for q, s, a, record_id in records],
            tokenizer.pad_token_id,
        )
        curriculum.on_validation_batch_start(SimpleNamespace(global_step=step), module, batch, 0)
        for row, (question, steps, answer, record_id) in enumerate(records):
            ours = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            ours = as_official(ours, len(question), int(batch["thoughts"][row]), len(answer), prefix, marker)
            theirs = official_training_sequence(
                stage, question, steps, answer, cfg, curriculum.draws(step, record_id, validation=True)
            )
            assert ours == theirs, (step, stage, record_id)
            at_random += ours != official_training_sequence(stage, question, steps, answer, fixed, random.Random(0))
            by_validation[step].append(ours)
    assert 0 < at_random < 2 * 5 * len(records)  # some records at a random stage, the others at the scheduled one
    assert by_validation[0] != by_validation[40]  # drawn anew at each validation


class ThoughtsSeen:
    """Wraps Coconut.layout to record each row's thoughts."""

    def __init__(self, method):
        self.layout, self.seen = method.layout, []

    def __call__(self, input_ids, attention_mask, prompt_len, thoughts):
        self.seen.append(thoughts.tolist())
        return self.layout(input_ids, attention_mask, prompt_len, thoughts)


@pytest.mark.parametrize("pad", [False, True])
def test_decoding_gives_each_record_the_official_number_of_thoughts(tokenizer, monkeypatch, pad):
    """Through Lightning's predict loop: records of 0..4 reasoning steps, at stages 0..4, decoded with
    get_question_latent_dataset's count each (without pad_latent_to_max, capped by their own steps).
    A record without a rationale (no official counterpart) has unknown steps: the stage's count."""
    cfg = CoconutConfig(k=6, c_thought=2, max_latent_stage=3, pad_latent_to_max=pad)
    method = Coconut(tiny.build_model(sizes(32), tokenizer, seed=0), cfg.k, pad_id=tokenizer.pad_token_id)
    module = MethodModule(method, TrainConfig(), tokenizer, DecodeConfig(max_new_tokens=1, engine="sequential"))
    spy = ThoughtsSeen(method)
    monkeypatch.setattr(method, "layout", spy)
    steps_of = [[[21 + n]] * n for n in range(5)]
    examples = [chain_of_thought_example([11, 12 + n], steps, [31], f"s{n}") for n, steps in enumerate(steps_of)]
    examples.append({"id": "plain", "input_ids": [17, 18, 37], "prompt_len": 2, "reference": ""})
    loader = DataLoader(
        examples, batch_size=len(examples), collate_fn=lambda rows: collate(rows, tokenizer.pad_token_id)
    )
    curriculum = CoconutCurriculum(cfg, seed=0)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[curriculum],
        max_steps=3 * cfg.steps_per_stage,
    )  # its last stage: 1 + 2
    for restored, stage in [*zip(range(5), range(5)), (None, 3)]:
        curriculum.stage = restored  # as a checkpoint trained to that stage restores it; None: weights alone
        trainer.predict(module, loader, return_predictions=False)
        official = [official_decoding_thoughts(stage, steps, cfg) for steps in steps_of]
        assert spy.seen.pop() == official + [decoding_thoughts(Schedule.of(cfg), stage)], stage
        assert method.thoughts == min(stage, 3) * 2  # the stage's count again after the batch
    capped = [official_decoding_thoughts(4, steps, cfg) for steps in steps_of]
    assert (capped != [6] * 5) == (not pad)  # without padding, records with fewer steps think less


# --- markers ------------------------------------------------------------------------------------


def coconut_overrides(*extra):
    return ["method=coconut", "coconut.markers=true", "coconut.marker_init=<|im_end|>", *extra]


@pytest.mark.parametrize("mode", GENERATOR_MODES)
def test_markers_join_the_vocabulary_as_copies_and_train_their_rows_only_under_lora(local_models, mode):
    method, tokenizer = build_method(
        load_config(None, [*local_models, *coconut_overrides(f"generator.mode={mode}")]), corpus=no_corpus
    )
    ids = tokenizer.convert_tokens_to_ids(list(MARKER_TOKENS))
    assert (method.markers.start, method.markers.latent, method.markers.end) == tuple(ids)
    assert tokenizer.decode([ids[0], 50, ids[2]], skip_special_tokens=True) == tokenizer.decode([50])
    table = lambda: method.generator.get_input_embeddings().weight.detach().clone()  # noqa: E731
    before = table()
    assert before.shape[0] == len(tokenizer)
    for row in ids:
        torch.testing.assert_close(before[row], before[tokenizer.eos_token_id], atol=0, rtol=0)

    trainable = [p for p in method.parameters() if p.requires_grad]
    if mode == "lora":
        names = [n for n, p in method.named_parameters() if p.requires_grad and "trainable_tokens" in n]
        assert names, "peft's trainable tokens carry the markers' rows"
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    logits = method(input_ids, torch.ones_like(input_ids), torch.tensor([3]))
    logits[0, 2:-1].logsumexp(-1).sum().backward()
    torch.optim.SGD(trainable, lr=1.0).step()
    changed = (table() - before).abs().sum(-1) > 0
    if mode == "lora":  # only the markers that are read: <|latent|> is a slot, never an input
        assert changed.nonzero()[:, 0].tolist() == [ids[0], ids[2]]
    else:
        assert changed[ids[0]] and changed[ids[2]] and changed.sum() > 2


def test_a_marker_init_that_is_not_one_token_is_refused(local_models):
    with pytest.raises(ConfigError, match=r"coconut.marker_init='<<' is 2 tokens"):
        build_method(
            load_config(None, [*local_models, "method=coconut", "coconut.markers=true", "coconut.marker_init='<<'"]),
            corpus=no_corpus,
        )


# --- config checks ------------------------------------------------------------------------------

CURRICULUM = [
    "method=coconut",
    "coconut.curriculum=true",
    "data.rationales=oracle",
    "coconut.first_stage=0",
    "trainer.max_steps=200",
]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([*CURRICULUM[:2], "coconut.first_stage=0"], "set data.rationales"),
        ([*CURRICULUM, "coconut.k=3"], r"max_latent_stage x coconut.c_thought = 2 thoughts.*\(got 3\)"),
        ([*CURRICULUM, "trainer.max_steps=80"], r"trainer.max_steps=80 ends at stage 1"),
        ([*CURRICULUM, "coconut.first_stage=1"], "name it in coconut.init_from"),
        (["method=sft", "coconut.init_from=x"], "warm-starts method=coconut"),
        (["method=coconut", "coconut.norm=rescale"], "coconut.norm='rescale' is not allowed"),
        (["method=coconut", "coconut.eps=0"], "coconut.eps=0.0 must be > 0"),
    ],
)
def test_bad_coconut_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_curriculum_is_the_one_other_reader_of_data_rationales():
    assert load_config(None, CURRICULUM).data.rationales == "oracle"


# --- warm start and a fit through the stages ------------------------------------------------------


class Spy(Callback):
    """After the curriculum's hook: the stage's thoughts, the optimiser state it left, the thoughts
    decoding would use."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((batch["thoughts"].tolist(), len(trainer.optimizers[0].state), pl_module.method.thoughts))


def test_a_fit_warm_starts_from_cot_and_walks_the_stages(run_config):
    common = ["data.rationales=oracle", "data.rationale_tokens=24", "callbacks.samples=0", "callbacks.throughput=false"]
    cot_dir = fit(run_config("method=cot", *common, "trainer.max_steps=1", "trainer.val_check_interval=1"))
    cot_weights = torch.load(cot_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    cfg = run_config(
        *coconut_overrides(),
        *common,
        "coconut.curriculum=true",
        f"coconut.init_from={cot_dir.parent}",
        "coconut.max_latent_stage=1",
        "coconut.c_thought=2",
        "coconut.k=2",
        "coconut.steps_per_stage=2",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "decode.max_new_tokens=4",
    )
    warm = build(cfg)[0]
    for key, value in cot_weights.items():  # every adapter weight the CoT run trained, loaded
        torch.testing.assert_close(warm.state_dict()[key], value, atol=0, rtol=0)

    spy = Spy()
    run_dir = fit(cfg, callbacks=[spy])
    # stage 1 (steps 0, 1): the first step as 2 thoughts; stage 2 (steps 2, 3): past max_latent_stage,
    # every step gone, still 2 thoughts; the optimiser state starts empty at each stage and is kept within it
    thoughts, states, decoded = zip(*spy.seen)
    assert thoughts == ([2] * 4,) * 4 and decoded == (2,) * 4
    assert states[0] == states[2] == 0 and states[1] > 0 and states[3] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"coconut/val_loss@stage1", "coconut/val_loss@stage2"} <= metrics.keys()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert any("trainable_tokens" in key for key in saved["state_dict"])
    assert any(state.get("stage") == 2 for key, state in saved["callbacks"].items() if "CoconutCurriculum" in key)
    # decoding loads the markers' trained rows with the adapter and thinks k=2 thoughts (lean LoRA path)
    predictions = predict(cfg, str(run_dir / "checkpoints" / "last.ckpt"), run_dir)
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 10 and all(0 < row["new_tokens"] <= 4 for row in rows)


def test_a_warm_start_needs_a_finished_cot_run_of_this_generator(run_config, tmp_path):
    def build_coconut(*overrides):
        return build(run_config("method=coconut", *overrides))

    with pytest.raises(ConfigError, match="train the method=cot run first"):
        build_coconut(f"coconut.init_from={tmp_path / 'nothing'}")
    sft_dir = fit(
        run_config("method=sft", "trainer.max_steps=1", "trainer.val_check_interval=1", "callbacks.samples=0")
    )
    with pytest.raises(ConfigError, match="must be a method=cot run of this Generator"):
        build_coconut(f"coconut.init_from={sft_dir}")
