"""Text metrics as LongLaMP computes them (offline), position-segmented evaluation, tables and plots.

Depends on nothing else in flythinker_pl (a tokenizer for token-based segments is passed in). The
modules are imported one by one, so that `python -m flythinker_pl.evaluation.wordnet` stays light:
  metrics      score_texts (BLEU, ROUGE-1, ROUGE-L, METEOR, optional BERTScore, seeded bootstrap, empty
               predictions counted, kept or dropped by LongLaMP's rule), word_tokens
  segments     position_scores, text_units
  predictions  evaluate_predictions, read_predictions (predictions.jsonl)
  torchmetric  TextGenerationScores (validation, strings gathered across DDP ranks)
  report       comparison_table, segment_table, plot_position_eval, save_position_eval
  gaps         paired bootstrap gaps of runs against their reference (overall, per window), gap plots
  palette      one colour per method, shared by every plot
  sweep_report a sweep's tables and plots from its finished runs (mean and std over seeds, gaps)
  wordnet      install (offline WordNet for METEOR), wordnet_unavailable_reason
"""
