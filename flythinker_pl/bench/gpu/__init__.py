"""GPU readiness: one command that runs every CUDA path at the paper's sizes and reports all at once.

    flythinker gpu-check [--out bench/gpu_check.json] [--sizes paper|tiny] [--only parity decode ...]

On a CUDA device (default sizes: paper) it builds the real architectures of Qwen2.5-0.5B/1.5B/3B-Instruct
(their config values are in models/architectures.py; random weights, nothing from the hub) and makes the
framework's own methods of them through models/build.py's steps (family checks included), then runs these
sections, each on its own time budget so that the whole run stays under 8 minutes on one GPU:

  parity    teacher-forced == incremental logits, through every engine (sequential, staggered on a side
            stream, shared), in fp32 and in bf16, with the tolerance stated; greedy tokens of staggered and
            shared == sequential; lambda = 0 == SFT (exactly)
  train     tokens/s and peak memory: SFT vs FlyThinker (Reasoner frozen / LoRA / full; the 0.5B and 1.5B
            Reasoners for the 3B Generator) and the shared base; bf16-mixed (fp32 weights, bf16 autocast:
            what train.precision=auto gives on GPU); a warm-up step, then a few timed steps
  decode    ms/token at batch 1, 16 and 64: SFT, sequential, staggered, shared (bf16 weights), and SFT with
            fp32 weights under bf16 autocast (what `flythinker predict` runs under bf16-mixed); ratios to SFT;
            SFT and sequential FlyThinker compiled (decode.compile: static cache, CUDA graphs), their
            compile seconds and speed-up over eager
  two_gpu   the Reasoner on cuda:1 (decode.reasoner_device): staggered == sequential, ms/token (>= 2 GPUs)
  ddp       2 processes over NCCL: FlyThinker trains and the replicas stay identical (>= 2 GPUs)

Every section runs even when an earlier one fails: an exception (CUDA OOM included) becomes
"failed: <error>" in the table, memory is released, and the next section starts. Within train and decode
a failure is one row's. On CPU the same code runs at tiny sizes in well under a minute (tests call it).
Output: JSON (--out) and a markdown table beside it (.md), also printed.

Timing: measure.timed (on CUDA, torch.cuda.Event pairs on the current stream after a device synchronize,
never the first call; on CPU, time.perf_counter). Decoding's ms/token is (time of N tokens - time of 1 token)
/ (N-1), both through decoding/generate.generate, medians of interleaved repeats: the prompt pass falls out.

One concern a module: plan (sizes, budgets), batches (random inputs), models (building), parity, train,
decode, scaleout (two GPUs, DDP), report (environment, the sections in order, markdown).
"""
