"""The columns that tokenized rows and batches carry beyond the model's own inputs, written by the task types and
read by the length report, evaluation, `finetune inspect` and the engine: each named once, here."""

TOTAL_LENGTH = "total_length"  # a row's tokens before truncation: read into the token report, then dropped
PROMPT_LENGTH = "prompt_length"  # generation: the prompt's tokens at the start of input_ids (the rest is target)
SOURCE_LENGTH = "source_length"  # generation: the source's tokens before any cut
TARGET_LENGTH = "target_length"  # generation: the target's tokens before any cut
TARGET_CUT = "target_cut"  # generation: the target was cut to data.max_target_length
SKIP = "skip"  # generation: why the row cannot train ("" when it can); such rows go once reported
ORIGIN = "origin"  # the mixture source a row came from
REFERENCES = "references"  # generation evaluation: the texts a prediction is scored against
GROUP = "group"  # generation evaluation: the task a row belongs to, for per-task tables
CHOICE_MASK = "choice_mask"  # a batch of groups (B, k): which of the k candidates are real
EXAMPLES = "examples"  # a packed batch: how many examples its rows hold
PACKED_REAL = "packed_real"  # a packed batch (R, W): 1 on the examples' tokens, 0 on a row's closing padding
EXAMPLE_ID = "example_id"  # a training row's index: language modelling seeds its masks with it
LENGTH_STATS = (SOURCE_LENGTH, TARGET_LENGTH, TOTAL_LENGTH, TARGET_CUT, SKIP, ORIGIN)  # dropped once reported
