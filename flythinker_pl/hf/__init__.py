"""Leaving the framework (DESIGN.md section 10): a trained run as a Hugging Face model folder.

models/fusion_math.py and models/modeling_flythinker.py import torch and transformers only:
`flythinker export` copies them verbatim into the folder. export.py writes the folder, stream.py is `flythinker
generate`, bench.py times the exported model's generate() against the framework's engine.
"""
