"""Tools: commands that measure or check a config without training it (benchmarks, AOT compile).

  python -m avdit.tools.benchmark ...              train-step and sampler speed, MFU
  python -m avdit.tools.benchmark_autoencoders ... MAGVIT-v2 / SoundStream speed, MFU
  python -m avdit.tools.benchmark_data ...         decoding speed, the trainer's data wait
  python -m avdit.tools.benchmark_sampling ...     sequential vs parallel (Picard) sampling speed
  python -m avdit.tools.train_compile ...          AOT compile for a TPU topology: fits? how fast?
"""
