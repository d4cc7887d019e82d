"""What the latents know (`flythinker probe RUN ...`): linear probes from a run's hidden states at each
response position to each latent attribute of the user, fitted on training users and scored on
held-out users.

  attributes.py  the labels: categorical functions of the synthetic data's users.jsonl
  features.py    a run's Reasoner / Generator final hidden states, mean per response-position window
  fit.py         one probe per (source, attribute, window); chance and user-bootstrap intervals
  report.py      probe.md, probe_vs_position.png, pca.png
  run.py         the command: every run, then the files
"""
