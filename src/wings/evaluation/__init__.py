"""Evaluation: multiple-choice and VQA scoring, the IIT benchmark, MLLM-LAWS, the forgetting report.

Modules, lowest first (each imports only those above it):

- records, pools, converters: pool files (schema, reading, benchmark converters).
- inputs, loading, scoring, harness: model inputs, loading saved models, choice log-likelihoods and
  greedy replies, lm-evaluation-harness text tasks.
- multiple_choice, vqa: the one multiple-choice loop and the one open-ended VQA loop.
- iit: the Interleaved Image-Text benchmark (build, files, evaluation, table, plot).
- laws_stats, laws_plots, laws: MLLM-LAWS results, their plots, and measuring them.
- plots, report, forgetting: figures, the forgetting report, and `wings eval` end to end.
"""
