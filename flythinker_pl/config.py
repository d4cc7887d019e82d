"""Structured run configuration: dataclasses are the schema, YAML + dotlist overrides fill it.

`load_config("experiments/demo.yaml", ["fusion.lam=1.0"])` returns a validated `Config`.
Unknown keys, wrong types and invalid choices fail before any work with a message naming the key
and listing what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

# What each `method` is (models/build.py builds it; README "Baselines and controls" compares them):
#   flythinker  Generator + Reasoner, the Reasoner's latent of position j-1 added at position j
#   sft         the Generator fine-tuned on profile + query
#   nonpers     the Generator on the query alone (needs data.retriever=none); zero-shot with trainer.max_steps=0
#   rag         the Generator on retrieved profile items + query, zero-shot (trainer.max_steps=0) by default
#   cot         think-then-generate in text: the Generator writes a rationale, then the response
#               (trained on data.rationales + response)
#   static      one-shot latent reasoning: the Reasoner's latent of the last prompt position is
#               added at every response position (needs fusion.span=response)
#   coconut     coconut.k continuous thoughts (fed-back last hidden states) after the prompt, optionally
#               with the official curriculum over data.rationales (coconut.curriculum)
#   flythinker_recurrent  the dependency ablation: FlyThinker whose Reasoner also reads its own previous
#               latent at response positions (recurrent.*), so it trains with sequential passes
METHODS = ("flythinker", "sft", "nonpers", "rag", "cot", "static", "coconut", "flythinker_recurrent")
# the methods with a Reasoner (reasoner.* and fusion.* apply)
REASONER_METHODS = ("flythinker", "static", "flythinker_recurrent")


@dataclass
class BackboneConfig:
    """One language model: a tiny preset name (see models/backbones.py), a hub id or a local path."""

    name: str = "tiny-128"
    mode: str = "lora"  # generator: lora | full; reasoner: frozen | lora | full
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # Attention and MLP projections of Qwen2/Llama-style decoders; never the LM head.
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    pretrain_steps: int = 300  # tiny presets only: local next-token pretraining before fine-tuning
    pretrain_seed: int = 0


@dataclass
class ReasonerConfig(BackboneConfig):
    name: str = "tiny-64"
    mode: str = "frozen"
    # One base model (the Generator's) with a `reasoner` and a `generator` LoRA adapter: the memory
    # of one model. Needs generator.mode=lora and reasoner.mode=lora; reasoner.name is then unused.
    shared_base: bool = False
    # Controls for "is the gain reasoning or a second network's capacity?":
    sees_profile: bool = True  # false: the Reasoner reads the query and response, never the user's history
    init: str = "pretrained"  # pretrained | random (the same architecture, randomly initialised; seeded by `seed`)


@dataclass
class CoconutConfig:
    """Coconut (facebookresearch/coconut; README "Baselines and controls" states the recipe and k)."""

    # Continuous thoughts between the prompt and the response when decoding, and in training without
    # the curriculum; k=0 is SFT. With the curriculum it must be max_latent_stage x c_thought.
    k: int = 2
    # none: the final-norm hidden state fed back raw (official) | table_mean: rescaled to the mean row
    # norm of E_G, as FlyThinker's latents (a labelled variant)
    norm: str = "none"
    eps: float = 1e-6  # table_mean only: floor on ||h|| in the rescale
    # <|start-latent|> before and <|end-latent|> after the thoughts (the official layout); the three
    # tokens (and <|latent|>) join the vocabulary, their embeddings (and LM-head rows) copied from
    # `marker_init`, text that is one existing token (official: "<<"); under LoRA peft trains their rows.
    markers: bool = False
    marker_init: str = "<<"
    # Warm start from a method=cot run: its run dir, its experiment dir (the newest finished run) or a
    # .ckpt file; "" = from the backbone. The official GSM8K recipe starts from a CoT checkpoint.
    init_from: str = ""
    # The official curriculum (data.rationales split into steps, data/coconut_schedule.py): stage
    # s = first_stage + step // steps_per_stage replaces the first s steps of the rationale by
    # s x c_thought thoughts; beyond max_latent_stage every step goes and the thoughts stay at
    # max_latent_stage x c_thought (pad_latent_to_max; else capped at the record's step count).
    curriculum: bool = False
    c_thought: int = 1
    max_latent_stage: int = 2
    steps_per_stage: int = 40  # the official epochs_per_stage, in optimiser steps
    first_stage: int = 1  # 0 trains stage 0 (plain CoT) here; 1 starts from a CoT run (init_from), as on GSM8K
    pad_latent_to_max: bool = True
    # chance that a training or validation record takes a random stage in 0..its step count (as the
    # official validation-loss set does); decoding is at the scheduled stage
    uniform_prob: float = 0.0
    reset_optimizer: bool = True  # fresh optimiser state at every stage change


@dataclass
class FusionConfig:
    lam: float = 0.5  # lambda: weight of the Reasoner latent added to the Generator input embedding
    norm: str = "table_mean"  # table_mean: rescale latents to the mean row norm of E_G | none
    dims: str = "pad"  # pad: add into the first d_R dims (needs d_R <= d_G) | linear: learned d_R -> d_G
    span: str = "global"  # global: every position j >= 1 | response: j >= P | prompt: 1 <= j < P
    eps: float = 1e-6  # floor on ||h|| in the rescale, so a zero hidden state gives zero, not NaN


@dataclass
class RecurrentConfig:
    """method=flythinker_recurrent (models/recurrent.py): at response positions j >= P the Reasoner reads
    e_R(x_j) + mu * r_{j-1}, r_{j-1} its own final hidden state at j-1 rescaled to the mean row norm of its
    own embedding table. The Generator's input is FlyThinker's."""

    mu: float = 1.0  # weight of the fed-back latent; 0 = FlyThinker exactly (same function)
    # The Reasoner's training passes. 0 = exact: the prompt in one pass, then the response token by token
    # through its KV cache, graph kept (one forward per response token; decoding's computation).
    # w >= 1 = truncated: w + 1 parallel passes, pass 0 without feedback (FlyThinker's Reasoner), pass p
    # fed pass p-1's states; exact on the prompt and the first w response tokens (so the losses of the
    # first w + 2 response tokens), the recurrence w hops deep beyond. Decoding is always exact.
    window: int = 0


@dataclass
class SyntheticConfig:
    """The embedded default data set: synthetic reviewers with latent, learnable preferences."""

    # reviews: product reviews written from each user's latent persona (data/synthetic.py) |
    # rule: short reviews whose verdict follows a per-user rule over two item attributes, to be
    # inferred from the history (data/synthetic_rule.py) | signature: short reviews ending with the
    # user's word, which the history reveals (data/synthetic_signature.py: the "does thinking pay?"
    # benchmark of make ablate-thinking)
    kind: str = "reviews"
    num_users: int = 120
    reviews_per_user: int = 8  # items per user's history (kind=rule too)
    seed: int = 0
    # reviews only: passes over the user's aspects per review: 1 = ~250-token reviews (the default
    # set, unchanged), 2 ~500, 4 ~1,000; the tone arc and aspect order span the whole text
    rounds: int = 1
    hint: bool = False  # rule, signature: the query states the user's latent value (the oracle)
    # signature only, the difficulty: how the history reveals the user's word (data/synthetic_signature.py):
    # direct (every item ends "Overall: <word>.") | majority (all but one in 4 consecutive items do;
    # that one names another word) | shared (no "Overall:"; the word is the one all shown items mention,
    # each beside one other) | crowded (the same among 3 others per item)
    reveal: str = "direct"


@dataclass
class DataConfig:
    """LongLaMP-schema records -> retrieval -> prompt -> token budgets -> batches (see data/)."""

    task: str = "product_review"  # product_review | abstract_generation | topic_writing (LongLaMP)
    setting: str = "user"  # user: disjoint users per split | temporal: latest item per user held out
    # Directory holding <task>_<setting>/{train,val,test}.{jsonl,json,parquet} (or the split files
    # directly, Parquet shards, a `datasets` save_to_disk directory: data/readers.py). Empty = `hub`
    # if set, else the synthetic set generated into `synthetic_dir` (cached, deterministic in `synthetic`).
    path: str = ""
    files: dict[str, str] = field(default_factory=dict)  # {train: FILE, val: ..., test: ...}; overrides path
    hub: str = ""  # e.g. LongLaMP/LongLaMP: loaded by config name <task>_<setting>; needs network + `datasets`
    synthetic_dir: str = "data/synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # error: stop at the first invalid record (file, index, id, field) | skip: leave invalid records
    # out, log counts per reason and write them to <run dir>/data_skipped.json
    on_bad_record: str = "error"
    max_records: Optional[int] = None  # first N records per split; None = all (for quick debugging)
    retriever: str = "bm25"  # bm25 (LongLaMP's fields, rank-bm25) | recency (k latest) | random | none
    k: int = 1  # retrieved profile items per prompt
    # seeds random retrieval and the training order (shuffled or length-bucketed); a sweep's declared
    # `seeds:` set it to each run's seed (a fully fine-tuned Generator has no other randomness)
    seed: int = 0
    system_prompt: Optional[str] = None  # None keeps the chat template's own default
    profile_tokens: int = 1250  # token budgets, as in the paper: the rendered history (retrieved items),
    input_tokens: int = 300  # the query,
    target_tokens: int = 1000  # the target (for the loss, in every split; the scored reference stays whole)
    batch_size: int = 8
    eval_batch_size: int = 8
    length_buckets: bool = False  # training batches of similar lengths (less padding), still shuffled
    bucket_chunk_batches: int = 64  # batches per length-sorted chunk: larger = less padding, less mixing
    num_workers: int = 0
    # method=cot: where each record's rationale comes from: "oracle" (synthetic data: written from
    # the user's latent truth, users.jsonl) or a JSON-lines file of {"id": ..., "rationale": ...}
    rationales: str = ""
    rationale_tokens: int = 128  # budget for the rationale in training targets


@dataclass
class TrainConfig:
    lr: float = 2e-4
    weight_decay: float = 0.025
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.01
    schedule: str = "cosine"  # cosine | linear | constant (after linear warmup)
    grad_clip: float = 1.0
    accumulate: int = 1
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU; or any Lightning precision
    gradient_checkpointing: bool = False
    # auto: rerunning the same command continues the newest unfinished run with an identical
    # config from its last.ckpt; never: always start fresh; or a path to a checkpoint.
    resume: str = "auto"


@dataclass
class TrainerConfig:
    """Passed to `lightning.Trainer` as keyword arguments."""

    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"  # auto | ddp | fsdp (sharded: lit/sharding.py) | any other Lightning strategy name
    num_nodes: int = 1
    max_steps: int = 300  # 0 = no training (zero-shot: validated and decoded with the loaded weights)
    max_epochs: int = -1
    val_check_interval: Any = 100
    check_val_every_n_epoch: Optional[int] = None
    limit_val_batches: Any = 1.0
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclass
class DecodeConfig:
    """One sampler for every method; defaults follow the paper (temperature 0.8, top-p 0.95) and
    add nothing hidden (the official HF paths silently used top-k 20 and repetition penalty 1.05)."""

    # FlyThinker: auto | sequential (the reference) | staggered | shared. auto picks what bench decode
    # measured fastest and logs its pick: one base with two adapters -> shared (sequential on the peft
    # LoRA path); a GPU -> staggered (side stream); CPU with >= 2 threads -> staggered (the Reasoner
    # steps in a worker process); 1 thread -> sequential. Single-model methods always decode plainly.
    engine: str = "auto"
    do_sample: bool = True  # false = greedy
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; >1 penalises tokens already in prompt or output
    min_new_tokens: int = 0
    max_new_tokens: int = 1536
    seed: int = 0  # each sample draws from its own stream seeded by (seed, id): batch-independent
    split: str = "test"  # what `flythinker predict` decodes
    max_records: Optional[int] = None  # decode (and score) only the split's first N records; None = all
    batch_size: int = 16
    output: str = "predictions.jsonl"  # written in the run dir
    reasoner_device: str = ""  # e.g. cuda:1 to decode with the Reasoner on its own GPU; "" = with the Generator
    # How LoRA layers run while decoding: lean (one fused forward per layer, models/lora_step.py; the
    # shared engine's per-row adapters need it) | peft (peft's own forward, the reference). Same function.
    lora_path: str = "lean"
    # A compiled decoding step: true | false | auto. true: each engine's step runs as a torch.compile graph
    # over a static KV cache (CUDA graphs on GPU; decoding/compiled.py), the same greedy tokens as eager;
    # the first decode of a shape compiles (seconds, cached on disk for later runs; reported apart as
    # compile_seconds). auto: on where bench decode measured it paying with compile time counted for a
    # typical decode (the demo's test split): on GPU; off on CPU. Not for flythinker_recurrent.
    compile: Any = "auto"


@dataclass
class EvalConfig:
    """Scoring of predictions: BLEU (0-100), ROUGE-1/L F and METEOR (0-1), overall and per position window;
    BERTScore F1 (0-1) overall, with a model; answer accuracy (0-1) overall, with answer_pattern."""

    segment_width: int = 50  # position windows [0, w), [w, 2w), ... of the output
    segment_max: int = 300  # windows stop here
    segment_unit: str = "words"  # words | tokens (the Generator tokenizer's)
    n_bootstrap: int = 1000  # seeded 95% bootstrap interval per metric; 0 = off
    bootstrap_seed: int = 0
    # keep: an empty prediction stays and scores 0 (stricter) | drop: LongLaMP's rule, rows whose
    # prediction or reference is empty are left out. Either way metrics.json counts them (`empty`).
    empty: str = "keep"
    # BERTScore F1 with this model: a local folder or hub id (e.g. roberta-large); "" = reported unavailable
    bertscore_model: str = ""
    bertscore_layer: Optional[int] = None  # its hidden layer (bert-score's default for roberta-large: 17); None = last
    # answer_accuracy: a regex with one capture group (e.g. data/synthetic_rule.py's
    # "Verdict: (keeper|sending it back)"); a row is right when its prediction's first match captures
    # what its reference's does. No match in the prediction = wrong; rows whose reference has none are
    # left out and counted (answer_missing_reference). "" = off
    answer_pattern: str = ""


@dataclass
class CallbacksConfig:
    """What lit/callbacks.py adds to a fit (TensorBoard: scalars, text, images, hparams)."""

    position_eval_every: int = 0  # every N validations: decode val samples, log per-position scores + plot; 0 = off
    position_eval_samples: int = 16  # validation records decoded by it
    samples: int = (
        2  # generation samples (prompt, reference, output with and without latents) logged as text at the end
    )
    throughput: bool = True  # training tokens/s and peak memory (metrics.json and TensorBoard)
    lambda_sweep: list[float] = field(default_factory=list)  # inference-time lambdas scored by val loss at the end


@dataclass
class LoggingConfig:
    root_dir: str = "lightning_logs"
    experiment: str = ""  # default: the config file's stem
    cache_dir: str = "~/.cache/flythinker-pl"  # trained tokenizers and pretrained tiny presets


@dataclass
class Config:
    seed: int = 42
    method: str = "flythinker"
    generator: BackboneConfig = field(default_factory=BackboneConfig)
    reasoner: ReasonerConfig = field(default_factory=ReasonerConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    coconut: CoconutConfig = field(default_factory=CoconutConfig)
    recurrent: RecurrentConfig = field(default_factory=RecurrentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


CHOICES = {
    "method": METHODS,
    "generator.mode": ("lora", "full"),
    "reasoner.mode": ("frozen", "lora", "full"),
    "reasoner.init": ("pretrained", "random"),
    "fusion.norm": ("table_mean", "none"),
    "coconut.norm": ("none", "table_mean"),
    "fusion.dims": ("pad", "linear"),
    "fusion.span": ("global", "response", "prompt"),
    "data.task": ("product_review", "abstract_generation", "topic_writing"),
    "data.setting": ("user", "temporal"),
    "data.retriever": ("bm25", "recency", "random", "none"),
    "data.on_bad_record": ("error", "skip"),
    "data.synthetic.kind": ("reviews", "rule", "signature"),
    "data.synthetic.reveal": ("direct", "majority", "shared", "crowded"),
    "train.schedule": ("cosine", "linear", "constant"),
    "decode.engine": ("auto", "sequential", "staggered", "shared"),
    "decode.lora_path": ("lean", "peft"),
    "decode.split": ("train", "val", "test"),
    "eval.segment_unit": ("words", "tokens"),
    "eval.empty": ("keep", "drop"),
}


class ConfigError(ValueError):
    pass


def _valid_keys(parent: str) -> list[str]:
    schema = OmegaConf.structured(Config)
    node = OmegaConf.select(schema, parent) if parent else schema
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, ConfigKeyError):
        parent = key.rpartition(".")[0]
        valid = ", ".join(_valid_keys(parent))
        return ConfigError(
            f"{source}: unknown config key '{key}'. Valid keys{' under ' + repr(parent) if parent else ''}: {valid}"
        )
    reason = str(getattr(err, "msg", err)).splitlines()[0]
    return ConfigError(f"{source}: bad value for '{key}': {reason}")


def _coconut_checks(cfg: Config) -> list[tuple[bool, str]]:
    coconut = cfg.coconut
    checks = [
        (coconut.k >= 0, f"coconut.k={coconut.k} must be >= 0"),
        (coconut.eps > 0, f"coconut.eps={coconut.eps} must be > 0"),
        # the checkpointed layers drop the KV cache that links the passes
        (
            cfg.method != "coconut" or not cfg.train.gradient_checkpointing,
            "method=coconut runs the prompt, its thoughts and the response as passes sharing one KV cache, "
            "which train.gradient_checkpointing disables: set it to false",
        ),
    ]
    if not (cfg.method == "coconut" and coconut.curriculum):
        return checks + [
            (
                not coconut.init_from or cfg.method == "coconut",
                f"coconut.init_from warm-starts method=coconut (got method={cfg.method})",
            )
        ]
    final_stage = coconut.first_stage + (cfg.trainer.max_steps - 1) // max(coconut.steps_per_stage, 1)
    return checks + [
        (
            coconut.c_thought >= 1 and coconut.max_latent_stage >= 1 and coconut.steps_per_stage >= 1,
            "coconut.c_thought, coconut.max_latent_stage and coconut.steps_per_stage must be >= 1",
        ),
        (
            coconut.first_stage >= 0 and 0 <= coconut.uniform_prob <= 1,
            "coconut.first_stage must be >= 0 and coconut.uniform_prob in [0, 1]",
        ),
        (
            bool(cfg.data.rationales),
            "coconut.curriculum=true replaces the reasoning steps of data.rationales by thoughts: set "
            "data.rationales=oracle (synthetic data) or a JSON-lines file of {id, rationale}",
        ),
        (
            coconut.k == coconut.max_latent_stage * coconut.c_thought,
            f"coconut.curriculum=true ends with coconut.max_latent_stage x coconut.c_thought = "
            f"{coconut.max_latent_stage * coconut.c_thought} thoughts, which decoding uses: set coconut.k to that "
            f"(got {coconut.k})",
        ),
        (
            cfg.trainer.max_steps > 0 and final_stage > coconut.max_latent_stage,
            f"coconut.curriculum=true must train past its last latent stage ({coconut.max_latent_stage}), so that "
            "the final model writes the response with no rationale left: with coconut.first_stage="
            f"{coconut.first_stage} and coconut.steps_per_stage={coconut.steps_per_stage}, trainer.max_steps="
            f"{cfg.trainer.max_steps} ends at stage {final_stage}",
        ),
        (
            coconut.first_stage == 0 or bool(coconut.init_from),
            f"coconut.first_stage={coconut.first_stage} skips stage 0 (plain CoT) because a method=cot run "
            "was trained already: name it in coconut.init_from, or set coconut.first_stage=0",
        ),
    ]


def _recurrent_checks(cfg: Config) -> list[tuple[bool, str]]:
    recurrent, on = cfg.recurrent, cfg.method == "flythinker_recurrent"
    return [
        (recurrent.mu >= 0, f"recurrent.mu={recurrent.mu} must be >= 0"),
        (recurrent.window >= 0, f"recurrent.window={recurrent.window} must be >= 0 (0 = exact)"),
        (
            not on or not cfg.reasoner.shared_base,
            "method=flythinker_recurrent needs a Reasoner of its own: reasoner.shared_base=true is not supported",
        ),
        (
            not on or cfg.reasoner.sees_profile,
            "method=flythinker_recurrent does not support reasoner.sees_profile=false",
        ),
        (
            not on or cfg.fusion.span != "prompt",
            "method=flythinker_recurrent feeds the Reasoner's latents back at response positions, whose latents "
            "fusion.span=prompt never injects: use fusion.span=global or response",
        ),
        (
            not on or recurrent.window > 0 or not cfg.train.gradient_checkpointing,
            "recurrent.window=0 (exact) steps the Reasoner through its KV cache in training, which "
            "train.gradient_checkpointing disables: set recurrent.window >= 1 or turn checkpointing off",
        ),
    ]


def _shared_base_checks(cfg: Config) -> list[tuple[bool, str]]:
    if not cfg.reasoner.shared_base:
        return []
    return [
        (
            cfg.method == "flythinker",
            f"reasoner.shared_base=true is implemented for method=flythinker only (got {cfg.method})",
        ),
        (
            (cfg.generator.mode, cfg.reasoner.mode) == ("lora", "lora"),
            "reasoner.shared_base=true puts two LoRA adapters on one base model: it needs generator.mode=lora and "
            f"reasoner.mode=lora (got {cfg.generator.mode}, {cfg.reasoner.mode})",
        ),
        # recomputation in backward would run with whichever adapter is active then
        (
            not cfg.train.gradient_checkpointing,
            "reasoner.shared_base=true cannot use train.gradient_checkpointing: the backward pass would recompute "
            "the Reasoner's layers with the Generator's adapter",
        ),
    ]


def _check_choices(cfg: Config) -> None:
    node = OmegaConf.structured(cfg)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(node, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    coconut_curriculum = cfg.method == "coconut" and cfg.coconut.curriculum
    checks = [
        (cfg.fusion.lam >= 0, f"fusion.lam={cfg.fusion.lam} must be >= 0"),
        (cfg.fusion.eps > 0, f"fusion.eps={cfg.fusion.eps} must be > 0"),
        (cfg.data.synthetic.rounds >= 1, f"data.synthetic.rounds={cfg.data.synthetic.rounds} must be >= 1"),
        (
            cfg.data.synthetic.rounds == 1 or cfg.data.synthetic.kind == "reviews",
            "data.synthetic.rounds lengthens the persona reviews: it needs data.synthetic.kind=reviews",
        ),
        (
            not cfg.data.synthetic.hint or cfg.data.synthetic.kind in ("rule", "signature"),
            "data.synthetic.hint states the user's latent value in the query: it needs data.synthetic.kind=rule "
            "or signature",
        ),
        (
            cfg.data.synthetic.reveal == "direct" or cfg.data.synthetic.kind == "signature",
            "data.synthetic.reveal sets how the signature benchmark's history reveals the word: it needs "
            "data.synthetic.kind=signature",
        ),
        (0 < cfg.decode.top_p <= 1, f"decode.top_p={cfg.decode.top_p} must be in (0, 1]"),
        (
            cfg.decode.compile in ("auto", True, False),
            f"decode.compile={cfg.decode.compile!r} is not allowed; choose one of true, false, auto",
        ),
        (
            cfg.decode.compile is not True or cfg.method != "flythinker_recurrent",
            "decode.compile=true: method=flythinker_recurrent's Reasoner carries its last hidden state from step to "
            "step, which the compiled step does not; use decode.compile=false or auto",
        ),
        (cfg.decode.max_new_tokens >= 1, f"decode.max_new_tokens={cfg.decode.max_new_tokens} must be >= 1"),
        (
            cfg.decode.max_records is None or cfg.decode.max_records >= 1,
            f"decode.max_records={cfg.decode.max_records} must be >= 1 (or null: every record)",
        ),
        (
            cfg.eval.bertscore_layer is None or cfg.eval.bertscore_layer >= 0,
            f"eval.bertscore_layer={cfg.eval.bertscore_layer} must be >= 0 (0 = the embeddings) or null (the last layer)",
        ),
        (
            not cfg.decode.reasoner_device or (cfg.method in REASONER_METHODS and not cfg.reasoner.shared_base),
            "decode.reasoner_device places a separate Reasoner: it needs method=flythinker or static without "
            "reasoner.shared_base",
        ),
        (
            cfg.decode.lora_path == "lean" or cfg.decode.engine != "shared",
            "decode.engine=shared runs both adapters in one batched op of the lean LoRA forward: it needs "
            "decode.lora_path=lean",
        ),
        (
            cfg.method != "nonpers" or cfg.data.retriever == "none",
            f"method=nonpers prompts with the query alone: set data.retriever=none (got {cfg.data.retriever})",
        ),
        (
            cfg.method != "rag" or cfg.data.retriever != "none",
            "method=rag prompts with retrieved profile items: data.retriever must not be none",
        ),
        (
            cfg.method != "cot" or bool(cfg.data.rationales),
            "method=cot trains on rationale + response: set data.rationales=oracle (synthetic data) or a "
            "JSON-lines file of {id, rationale}",
        ),
        (
            cfg.method == "cot" or not cfg.data.rationales or coconut_curriculum,
            f"data.rationales puts a rationale before the response in the targets (coconut.curriculum=true "
            f"replaces it step by step): only method=cot writes and splits one (got method={cfg.method})",
        ),
        (
            cfg.method != "static" or cfg.fusion.span == "response",
            "method=static adds the prompt's one latent at every response position: set fusion.span=response "
            f"(got {cfg.fusion.span})",
        ),
        *_coconut_checks(cfg),
        *_recurrent_checks(cfg),
        *_shared_base_checks(cfg),
        (
            cfg.reasoner.sees_profile or cfg.method in REASONER_METHODS,
            f"reasoner.sees_profile=false needs a method with a Reasoner ({', '.join(REASONER_METHODS)})",
        ),
        (
            cfg.reasoner.sees_profile or not cfg.reasoner.shared_base,
            "reasoner.sees_profile=false is not supported with reasoner.shared_base=true",
        ),
        (
            cfg.reasoner.init == "pretrained" or not cfg.reasoner.shared_base,
            "reasoner.init=random needs a Reasoner of its own (reasoner.shared_base=false)",
        ),
        (
            cfg.callbacks.position_eval_every >= 0 and cfg.callbacks.samples >= 0,
            "callbacks.position_eval_every and callbacks.samples must be >= 0",
        ),
        (
            not cfg.callbacks.lambda_sweep or cfg.method in REASONER_METHODS,
            f"callbacks.lambda_sweep rescales a Reasoner's latents: it needs method={' or '.join(REASONER_METHODS)} "
            f"(got method={cfg.method})",
        ),
        (
            not cfg.trainer.strategy.startswith(("deepspeed_stage_3", "fsdp_")),
            f"trainer.strategy={cfg.trainer.strategy} releases the Generator's embedding table outside its forward, "
            "where the latent rescale reads it (the official code's ZeRO-3 run injected nothing): use "
            "trainer.strategy=fsdp (FSDP2 through Lightning; parameters sharded as under ZeRO-3, the rescale exact)",
        ),
        (
            all(lam >= 0 for lam in cfg.callbacks.lambda_sweep),
            f"callbacks.lambda_sweep={cfg.callbacks.lambda_sweep}: every lambda must be >= 0",
        ),
    ]
    for holds, message in checks:
        if not holds:
            raise ConfigError(message)


def _read_yaml(path: Path) -> list[tuple[Path, DictConfig]]:
    """The file and its `base:` files (a path relative to the file, or a list of them merged in
    order, e.g. a task then a method), outermost base first."""
    node = OmegaConf.load(path)
    base = node.pop("base", None)
    bases = [base] if isinstance(base, str) else list(base or [])
    return [layer for name in bases for layer in _read_yaml(path.parent / name)] + [(path, node)]


def load_config(path: Optional[str | Path | list] = None, overrides: list[str] = ()) -> Config:
    """Schema defaults <- YAML file(s) in order, later winning, each after its `base:` files <-
    dotlist overrides, validated. The experiment is named after the first file (e.g.
    [experiments/demo.yaml, experiments/debug/tiny.yaml] is the demo, shrunk)."""
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    merged = OmegaConf.structured(Config)
    for source, node in (item for file in paths for item in _read_yaml(Path(file))):
        try:
            merged = OmegaConf.merge(merged, node)
        except OmegaConfBaseException as err:
            raise _explain(err, str(source)) from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise _explain(err, "command-line override") from None
    cfg: Config = OmegaConf.to_object(merged)
    if not cfg.logging.experiment:
        cfg.logging.experiment = Path(paths[0]).stem if paths else "default"
    _check_choices(cfg)
    return cfg


def to_yaml(cfg: Config, without: tuple[str, ...] = ()) -> str:
    """The config as YAML, optionally without some top-level groups (e.g. the settings that do not
    change a stage's outputs, when deciding whether those outputs can be reused)."""
    node = OmegaConf.to_container(OmegaConf.structured(cfg))
    for group in without:
        node.pop(group)
    return OmegaConf.to_yaml(node)
