"""`python -m finetune ...` (used by `accelerate launch -m finetune train ...`)."""

from finetune.cli import main

main()
